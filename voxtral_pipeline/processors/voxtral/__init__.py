"""The Voxtral stage: speech in, streamed text out, one inference per user turn.

* :mod:`.processor`: :class:`VoxtralLLMService`, the per-session pipecat ``LLMService``
  (conversation, streaming, metrics, interruption, idle-time transcripts).
* :mod:`.settings`: :class:`VoxtralLLMSettings`, its runtime-updatable settings.
* :mod:`.context`: the session's ``LLMContext`` with the audio memory of its spoken turns.
* :mod:`.adapter`: :class:`VoxtralLLMAdapter`, ``LLMContext`` to mistral-common's request.
* :mod:`.tools` / :mod:`.tool_round`: Voxtral's calls in its token stream; a round of calls run
  by pipecat's function-calling machinery.
* :mod:`.speculation`: answers started at the VAD stop, held until the turn is confirmed.
* :mod:`.vllm`: :class:`VLLMClient`, the same stage on a vLLM server.

The in-process model engine shared by every session is :mod:`voxtral_pipeline.engine`.
"""

from voxtral_pipeline.engine import EngineRequest, EngineResult, VoxtralEngine
from voxtral_pipeline.processors.voxtral.adapter import VoxtralLLMAdapter
from voxtral_pipeline.processors.voxtral.context import VoxtralContext
from voxtral_pipeline.processors.voxtral.processor import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.settings import VoxtralLLMSettings
from voxtral_pipeline.processors.voxtral.vllm import VLLMClient, VLLMError

__all__ = [
    "EngineRequest",
    "EngineResult",
    "VLLMClient",
    "VLLMError",
    "VoxtralContext",
    "VoxtralEngine",
    "VoxtralLLMAdapter",
    "VoxtralLLMService",
    "VoxtralLLMSettings",
]
