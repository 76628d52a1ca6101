"""What one user turn cost the Voxtral stage: tokens, time, and how it ended (typed)."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ToolCallRecord:
    """One function call of a turn: what was asked, what came back, how long the handler took."""

    name: str
    arguments: dict[str, Any]
    result: Any = None
    error: str | None = None
    ms: float = 0.0


@dataclass
class TurnStats:
    """One user turn (or one completion pipecat asked for) on the Voxtral stage.

    Token counts and times cover every request of the turn (a function call and the answer after
    it, resumptions after preemption). ``ahead_prefill_*`` is the work done *for* this turn before
    it started: the idle-time cache refresh and discarded speculative answers since the previous
    turn, so ``prefill_tokens + ahead_prefill_tokens`` is the prefill the turn really cost.

    Parameters:
        turn: Index among the session's turns.
        trigger: ``audio`` (a spoken turn), ``context``, ``run`` or ``messages`` (a completion
            pipecat asked for with ``LLMContextFrame``, ``LLMRunFrame``, ``LLMMessagesAppendFrame``).
        speech_end_time: When the user stopped speaking (wall clock; request time for text turns).
        audio_secs: Length of the turn's audio.
        dropped: Why the turn got no inference (too short, silent), or None.
        prompt_tokens, audio_tokens: The prompt's size (of the last request), audio tokens included.
        prefill_tokens: Prompt tokens computed by this turn's requests (the rest came from the cache).
        prefill_ms: Time of those prefills (to the first token of each ``generate()``).
        cached_tokens: Prompt tokens taken from the session's KV cache.
        ahead_prefill_tokens, ahead_prefill_ms: Prefill done for this turn before it started.
        completion_tokens: Tokens generated.
        generate_calls: ``generate()`` calls (or vLLM requests) for the turn.
        preemptions: Times the answer yielded the engine to another session.
        ttft_ms: From the end of speech to the first token (held or not).
        queued_ms, prepare_ms, first_token_ms, generate_ms: The engine's timings of the turn.
        decode_tokens_per_s: Decode rate after the first token.
        speculative: The answer was started at the VAD stop and confirmed.
        speculation_saved_ms: How much sooner its first token was out than without speculation.
        interrupted: The answer was cut off.
        error: What failed, or None.
        text: What the stage sent downstream.
        fillers: Fillers said while handlers ran.
        tool_calls: The turn's function calls.
        tool_rounds_exhausted: The model still called functions after ``voxtral.tools.max_rounds``.
    """

    turn: int
    trigger: str = "audio"
    speech_end_time: float = 0.0
    audio_secs: float = 0.0
    dropped: str | None = None
    prompt_tokens: int | None = None
    audio_tokens: int | None = None
    prefill_tokens: int | None = None
    prefill_ms: float | None = None
    cached_tokens: int | None = None
    ahead_prefill_tokens: int = 0
    ahead_prefill_ms: float = 0.0
    completion_tokens: int = 0
    generate_calls: int = 0
    preemptions: int = 0
    ttft_ms: float | None = None
    queued_ms: float | None = None
    prepare_ms: float | None = None
    first_token_ms: float | None = None
    generate_ms: float | None = None
    decode_tokens_per_s: float | None = None
    speculative: bool = False
    speculation_saved_ms: float | None = None
    interrupted: bool = False
    error: str | None = None
    text: str = ""
    fillers: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    tool_rounds_exhausted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON reports."""
        return asdict(self)


class AheadWork:
    """Prefill done for the session's next turn before it starts (idle refresh, discarded speculation).

    Added to from the engine thread (a discarded answer ends there), taken on the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = 0
        self._ms = 0.0

    def add(self, tokens: int, secs: float) -> None:
        with self._lock:
            self._tokens += tokens
            self._ms += secs * 1000

    def take(self) -> tuple[int, float]:
        with self._lock:
            taken = (self._tokens, self._ms)
            self._tokens, self._ms = 0, 0.0
            return taken
