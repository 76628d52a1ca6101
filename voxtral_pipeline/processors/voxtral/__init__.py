"""The Voxtral stage: speech in, streamed text out, one inference per user turn.

* :mod:`.processor`: :class:`VoxtralLLMService`, the per-session pipecat stage (conversation,
  streaming, metrics, interruption, idle-time transcripts).
* :mod:`.engine`: :class:`VoxtralEngine`, the in-process model engine shared by every session
  (queue with preemption, per-session KV caches).
* :mod:`.context`: the session's conversation and how it is rendered under the audio budget.
* :mod:`.vllm`: :class:`VLLMClient`, the same stage on a vLLM server.
"""

from voxtral_pipeline.processors.voxtral.context import VoxtralContext
from voxtral_pipeline.processors.voxtral.engine import EngineRequest, EngineResult, VoxtralEngine
from voxtral_pipeline.processors.voxtral.processor import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.vllm import VLLMClient, VLLMError

__all__ = [
    "EngineRequest",
    "EngineResult",
    "VLLMClient",
    "VLLMError",
    "VoxtralContext",
    "VoxtralEngine",
    "VoxtralLLMService",
]
