"""The in-process Voxtral engine, shared by every session in the process; split by role.

* :mod:`.scheduler`: :class:`VoxtralEngine`, the queue with preemption and its worker thread.
* :mod:`.kv_store`: per-session KV caches, reused up to the common prefix with the next prompt.
* :mod:`.prompt`: token ids of a chat or transcription request, and mel features.
* :mod:`.generate`: the generate loop (a slice of an answer, the idle-time refresh).
* :mod:`.tokens`: control-token ids, read from the tokenizer.
* :mod:`.requests`: :class:`EngineRequest`, :class:`EngineResult`, the engine's log.
"""

from voxtral_pipeline.engine.requests import EngineEvent, EngineRequest, EngineResult
from voxtral_pipeline.engine.scheduler import VoxtralEngine
from voxtral_pipeline.engine.tokens import MissingTokenError, SpecialTokens

__all__ = [
    "EngineEvent",
    "EngineRequest",
    "EngineResult",
    "MissingTokenError",
    "SpecialTokens",
    "VoxtralEngine",
]
