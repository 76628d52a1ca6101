"""Where the Voxtral stage's requests run: the shared in-process engine, or a vLLM server.

The stage talks to one :class:`VoxtralBackend` and never asks which: an answer streams its text
to a callback and returns its numbers, a transcript is text (None when a new turn took the model
first), a cache refresh prefills the next turn's context while the session is idle (only where
the backend keeps a per-session cache), a one-shot completion serves ``run_inference``.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.engine import EngineRequest, EngineResult, VoxtralEngine
from voxtral_pipeline.models.voxtral import (
    AUDIO_TOKENS_PER_CHUNK,
    SAMPLE_RATE,
    ConversationTurn,
    VoxtralBundle,
    audio_content_part,
    build_conversation,
    load_voxtral,
)
from voxtral_pipeline.processors.voxtral.tools import ToolCall, openai_tool_calls
from voxtral_pipeline.processors.voxtral.vllm import VLLMClient

WARMUP_SECS = 1.0
WARMUP_NEW_TOKENS = 2
_END = object()  # queue sentinel: the engine is done with this answer


@dataclass
class AnswerJob:
    """One request for an answer: the chat, the tools, the sampling, a cancel flag any thread may set.

    ``on_finished`` is called with the engine's numbers when the request ends, even after the
    awaiting task was cancelled (a discarded speculative answer's work is billed to the next turn).
    """

    session_id: str
    messages: list[dict[str, Any]]
    max_new_tokens: int
    temperature: float
    top_p: float
    tools: list[dict[str, Any]] | None = None
    seed: int | None = None
    min_new_tokens: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    on_finished: Callable[[EngineResult], None] | None = None


class VoxtralBackend(ABC):
    """The stage's model, wherever it runs."""

    #: Audio parts one prompt may carry (None: no limit beyond the audio budget).
    max_audios: int | None = None
    #: Whether the backend keeps the session's KV cache (idle refreshes pay off).
    keeps_cache: bool = False

    async def start(self) -> None:  # noqa: B027  (most backends need nothing more)
        """Load or connect (in ``setup()``)."""

    async def close(self) -> None:  # noqa: B027
        """Release what the session holds."""

    @abstractmethod
    async def answer(
        self,
        job: AnswerJob,
        on_text: Callable[[str], Awaitable[None]],
        on_calls: Callable[[list[ToolCall]], None],
    ) -> EngineResult:
        """Stream an answer's text to ``on_text``; structured calls (vLLM's) go to ``on_calls``."""

    @abstractmethod
    async def transcribe(
        self, audio: np.ndarray, language: str | None, cancel: threading.Event, max_new_tokens: int
    ) -> str | None:
        """The transcript of one user turn (None: cancelled by a new turn; try again later)."""

    async def refresh(
        self,
        session_id: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        cancel: threading.Event,
    ) -> EngineResult | None:
        """Prefill the context the next turn will see (None where there is no cache to fill)."""
        return None

    @abstractmethod
    async def complete(
        self, messages: list[dict[str, Any]], max_new_tokens: int, temperature: float, top_p: float
    ) -> str:
        """A one-shot completion outside any session's cache."""


class LocalBackend(VoxtralBackend):
    """The shared in-process engine (one per loaded model and device)."""

    def __init__(
        self,
        config: VoxtralConfig,
        session_id: str,
        *,
        bundle: VoxtralBundle | None = None,
        engine: VoxtralEngine | None = None,
        warmup: bool = True,
    ):
        self._config = config
        self._session_id = session_id
        self._bundle = bundle if bundle is not None else (engine.bundle if engine else None)
        self.engine = engine
        self._warmup = warmup
        self.keeps_cache = config.kv_cache

    @property
    def bundle(self) -> VoxtralBundle | None:
        return self._bundle

    async def start(self) -> None:
        c = self._config
        if self.engine is None:
            if self._bundle is None:
                self._bundle = await asyncio.to_thread(shared_bundle, c)
            self.engine = VoxtralEngine.for_bundle(
                self._bundle,
                quantum_tokens=c.fairness_quantum_tokens,
                kv_cache=c.kv_cache,
                kv_cache_max_tokens=c.kv_cache_max_tokens,
                kv_cache_sessions=c.kv_cache_sessions,
                mel_on_device=c.mel_on_device,
                static_cache=c.static_cache,
                compile=c.compile,
            )
        if self._warmup and not self.engine.warmed_up:
            self.engine.warmed_up = True
            t0 = time.perf_counter()
            silence = audio_content_part(np.zeros(int(WARMUP_SECS * SAMPLE_RATE), np.float32))
            request = EngineRequest(
                session_id=f"warmup-{self._session_id}",
                kind="warmup",
                conversation=build_conversation([ConversationTurn("user", audio=silence)], c.instructions),
                max_new_tokens=WARMUP_NEW_TOKENS,
            )
            await asyncio.wrap_future(self.engine.submit(request))
            logger.debug(f"Voxtral engine warmed up in {(time.perf_counter() - t0) * 1000:.0f} ms")

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.release_session(self._session_id)

    def _loaded_engine(self) -> VoxtralEngine:
        if self.engine is None:
            raise RuntimeError("the Voxtral model is not loaded yet (the stage's setup() loads it)")
        return self.engine

    def _submit(self, request: EngineRequest) -> asyncio.Future:
        return asyncio.wrap_future(self._loaded_engine().submit(request))

    async def answer(
        self,
        job: AnswerJob,
        on_text: Callable[[str], Awaitable[None]],
        on_calls: Callable[[list[ToolCall]], None],
    ) -> EngineResult:
        engine = self._loaded_engine()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_delta(text: str, n_tokens: int) -> None:  # on the engine thread
            _call_soon(loop, queue.put_nowait, text)

        request = EngineRequest(
            session_id=job.session_id,
            conversation=job.messages,
            on_delta=on_delta,
            cancel=job.cancel,
            max_new_tokens=job.max_new_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            min_new_tokens=job.min_new_tokens,
            tools=job.tools,
        )
        engine_future = engine.submit(request)
        if job.on_finished is not None:
            on_finished = job.on_finished
            engine_future.add_done_callback(
                lambda f: on_finished(f.result()) if not f.cancelled() and f.exception() is None else None
            )
        future = asyncio.wrap_future(engine_future)
        future.add_done_callback(lambda _: queue.put_nowait(_END))
        while (item := await queue.get()) is not _END:
            await on_text(item)
        # Deltas scheduled before the end marker are all in the queue ahead of it.
        return future.result()

    async def transcribe(
        self, audio: np.ndarray, language: str | None, cancel: threading.Event, max_new_tokens: int
    ) -> str | None:
        request = EngineRequest(
            session_id=self._session_id,
            kind="transcribe",
            audio=audio,
            cancel=cancel,
            max_new_tokens=max_new_tokens,
            language=language,
        )
        result = await self._submit(request)
        return None if result.cancelled else result.text.strip()

    async def refresh(
        self,
        session_id: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        cancel: threading.Event,
    ) -> EngineResult | None:
        if not self.keeps_cache:
            return None
        request = EngineRequest(
            session_id=session_id, kind="refresh", conversation=messages, tools=tools, cancel=cancel
        )
        return await self._submit(request)

    async def complete(
        self, messages: list[dict[str, Any]], max_new_tokens: int, temperature: float, top_p: float
    ) -> str:
        request = EngineRequest(
            session_id="",
            conversation=messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
        )
        return (await self._submit(request)).text


class VLLMBackend(VoxtralBackend):
    """A vLLM server over its OpenAI-compatible API (prefix caching is the server's)."""

    def __init__(self, config: VoxtralConfig, session_id: str):
        self._config = config
        self._session_id = session_id
        self.max_audios = config.vllm.max_audios
        self._client: VLLMClient | None = None

    async def start(self) -> None:
        self._client = VLLMClient(self._config.vllm, self._session_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> VLLMClient:
        if self._client is None:
            raise RuntimeError("the vLLM client is not connected yet (the stage's setup() connects it)")
        return self._client

    async def answer(
        self,
        job: AnswerJob,
        on_text: Callable[[str], Awaitable[None]],
        on_calls: Callable[[list[ToolCall]], None],
    ) -> EngineResult:
        body = self.client.chat_body(
            job.messages,
            max_tokens=job.max_new_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            tools=job.tools,
            min_tokens=job.min_new_tokens,
        )
        result = EngineResult(audio_tokens=_audio_tokens(job.messages))
        deltas: dict[int, dict[str, str]] = {}
        async for text in self.client.stream_chat(body, result, deltas):
            await on_text(text)
        on_calls(openai_tool_calls(deltas))
        return result

    async def transcribe(
        self, audio: np.ndarray, language: str | None, cancel: threading.Event, max_new_tokens: int
    ) -> str | None:
        return await self.client.transcribe(audio, language, max_new_tokens)

    async def complete(
        self, messages: list[dict[str, Any]], max_new_tokens: int, temperature: float, top_p: float
    ) -> str:
        body = self.client.chat_body(
            messages, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p
        )
        return "".join([t async for t in self.client.stream_chat(body, EngineResult(), {})])


def make_backend(
    config: VoxtralConfig,
    session_id: str,
    *,
    bundle: VoxtralBundle | None = None,
    engine: VoxtralEngine | None = None,
    warmup: bool = True,
) -> VoxtralBackend:
    """The backend ``config.backend`` names."""
    if config.backend == "vllm":
        return VLLMBackend(config, session_id)
    return LocalBackend(config, session_id, bundle=bundle, engine=engine, warmup=warmup)


def _audio_tokens(messages: list[dict[str, Any]]) -> int:
    """``[AUDIO]`` tokens the server will see: 375 per started 30 s of each audio part (16-bit WAV)."""
    total = 0
    for m in messages:
        for part in m.get("content") or [] if isinstance(m.get("content"), list) else []:
            if part.get("type") == "audio":
                samples = max(0, (len(base64.b64decode(part["base64"])) - 44) // 2)
                total += AUDIO_TOKENS_PER_CHUNK * max(1, -(-samples // (30 * SAMPLE_RATE)))
    return total


_SHARED: dict[tuple, VoxtralBundle] = {}


def shared_bundle(config: VoxtralConfig) -> VoxtralBundle:
    """One loaded model per (spec, device, dtype, attention, seed) in the process."""
    key = (config.model, config.device, config.dtype, config.attn_implementation, config.seed)
    bundle = _SHARED.get(key)
    if bundle is None:
        bundle = load_voxtral(
            config.model,
            config.device,
            config.dtype,
            config.seed,
            attn_implementation=config.attn_implementation,
        )
        _SHARED[key] = bundle
    return bundle


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Schedule on the event loop from the engine thread; a closed loop has nobody to tell."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass
