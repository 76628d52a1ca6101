"""What the engine is asked (:class:`EngineRequest`), what it answers (:class:`EngineResult`), its log."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from voxtral_pipeline.engine.generate import JobStreamer

JobKind = Literal["answer", "transcribe", "refresh", "warmup"]
FinishReason = Literal["stop", "length"]
# Queue classes: lower runs first.
NEW_ANSWER, RESUMED_ANSWER, BACKGROUND = 0, 1, 2


@dataclass
class EngineResult:
    """What one request produced.

    Parameters:
        token_ids: Generated ids (EOS included when the model stopped by itself).
        text: Their visible text.
        prompt_tokens: Prompt length, audio tokens included.
        audio_tokens: ``[AUDIO]`` tokens in the prompt.
        prefill_tokens: Prompt tokens actually computed (not taken from the KV cache), all slices.
        cached_tokens: Prompt tokens reused from the session's KV cache on the first slice.
        generate_calls: ``generate()`` calls (1, plus one per resumption after yielding).
        preemptions: Times this answer yielded the engine to another session.
        cancelled: Stopped by its cancel event.
        finish_reason: Why generation ended, in OpenAI's words: ``"stop"`` (the model ended its
            answer), ``"length"`` (``max_new_tokens`` cut it: what it wrote may be incomplete, a
            function call included); None when cancelled or not generated.
        queued_s: From submission to the start of its first slice.
        prepare_s: Tokenizing and mel features (first slice).
        prefill_s: Prefill time: a refresh's forward pass; for answers, each slice's time to its
            first token (the prefill of the uncached suffix and one decode step).
        first_token_s: From the start of the first ``generate()`` to the first token.
        generate_s: Time spent in ``generate()`` (all slices).
        decode_tokens_per_s: Decode rate after the first token (time in ``generate()`` only).
    """

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    audio_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    generate_calls: int = 0
    preemptions: int = 0
    cancelled: bool = False
    finish_reason: FinishReason | None = None
    queued_s: float = 0.0
    prepare_s: float = 0.0
    prefill_s: float = 0.0
    first_token_s: float | None = None
    generate_s: float = 0.0
    decode_tokens_per_s: float | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class EngineRequest:
    """One unit of work for the engine.

    Parameters:
        session_id: Whose KV cache to use (answers and refreshes); empty: none (a one-shot).
        kind: ``answer`` (chat, streamed), ``transcribe`` (transcription mode), ``refresh``
            (prefill the session's next context while idle), ``warmup``.
        conversation: Chat messages (answer, refresh, warmup).
        audio: Float32 16 kHz samples (transcribe).
        on_delta: ``on_delta(text, n_tokens)``, called on the engine thread for every token.
        cancel: Set from any thread to stop within one decode step.
        max_new_tokens, temperature, top_p, seed: Generation settings.
        min_new_tokens: Do not stop at EOS before this many tokens (benchmarks).
        language: Transcription language (None: let the model decide).
        tools: Functions offered to the model (OpenAI/Mistral format), rendered by the tokenizer.
    """

    session_id: str
    kind: JobKind = "answer"
    conversation: list[dict[str, Any]] | None = None
    audio: np.ndarray | None = None
    on_delta: Callable[[str, int], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    language: str | None = "en"
    tools: list[dict[str, Any]] | None = None


@dataclass
class EngineEvent:
    """One entry of the engine's log (for tests and debugging): what ran, for whom, how it ended."""

    kind: str
    session_id: str
    event: Literal["start", "yield", "resume", "done", "cancelled", "error"]
    tokens: int
    at: float


@dataclass
class Job:
    """A request inside the engine: its place in the queue and what its slices have done so far."""

    request: EngineRequest
    future: Future
    seq: int
    klass: int
    submitted_at: float
    result: EngineResult = field(default_factory=EngineResult)
    streamer: JobStreamer | None = None
    # Set on the first slice and kept for resumptions.
    prompt_ids: list[int] | None = None
    audios: list[np.ndarray] | None = None
    features: torch.Tensor | None = None  # a transcription's mel features, computed once
    started: bool = False
    slice_t0: float = 0.0
    slice_token_seen: bool = False

    def restart(self) -> None:
        """Preempted background work starts over (it holds no cache worth resuming)."""
        self.started = False
        self.result = EngineResult()
        self.streamer = None
        self.features = None
