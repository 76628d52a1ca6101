"""Voxtral stage: hears each user utterance and streams its answer, one inference per turn.

A ``UserUtteranceFrame`` (the turn stage's whole utterance) becomes exactly one ``generate()``
on the conversation so far: earlier user turns as audio, earlier answers as the text the bot
actually said, the new turn as audio. The answer goes downstream as ``LLMFullResponseStartFrame``,
one ``LLMTextFrame`` per token as soon as it decodes, then ``LLMFullResponseEndFrame``, so the
chunker and TTS can start on the first word.

Generation runs on one dedicated worker thread (the model is never used by two turns at once);
tokens reach the event loop through ``call_soon_threadsafe``. An ``InterruptionFrame`` stops it
within one decode step and keeps in the history only the text already sent downstream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.utils.errors import ErrorCategory

from voxtral_pipeline.audio import pcm16_to_float
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models.voxtral import (
    SAMPLE_RATE,
    ConversationTurn,
    GenerationResult,
    VoxtralBundle,
    audio_content_part,
    build_conversation,
    generate_streaming,
    load_voxtral,
)

WARMUP_SECS = 1.0
WARMUP_NEW_TOKENS = 2
_END = object()  # queue sentinel: the worker thread is done with this turn


@dataclass
class _Turn:
    """One in-flight generation and what it has sent downstream so far."""

    index: int
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task | None = None
    text_parts: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class VoxtralLLMService(FrameProcessor):
    """Speech-in, text-out LLM stage on Voxtral (in-process transformers).

    Consumes ``UserUtteranceFrame``; forwards every other frame. Per-turn numbers are kept in
    :attr:`turn_stats` and the conversation in :attr:`history`.
    """

    def __init__(
        self,
        config: VoxtralConfig,
        *,
        bundle: VoxtralBundle | None = None,
        warmup: bool = True,
        **kwargs,
    ):
        """Initialize the stage.

        Args:
            config: Model spec, device, sampling and instructions.
            bundle: An already loaded model (shared between stages or tests); loaded in
                ``setup()`` from ``config`` when None.
            warmup: Run one short generation on silence in ``setup()``, so the first user turn
                does not pay for lazy initialization.
            **kwargs: Passed to ``FrameProcessor``.
        """
        super().__init__(**kwargs)
        self._config = config
        self._bundle = bundle
        self._warmup = warmup
        self._executor: ThreadPoolExecutor | None = None
        self._history: list[ConversationTurn] = []
        self._turn_stats: list[dict[str, Any]] = []
        self._turn: _Turn | None = None
        self._generate_calls = 0

    @property
    def bundle(self) -> VoxtralBundle | None:
        """The loaded model (None before ``setup()`` when none was given)."""
        return self._bundle

    @property
    def history(self) -> list[ConversationTurn]:
        """The conversation so far: user turns as audio, the bot's turns as the text it sent."""
        return list(self._history)

    @property
    def turn_stats(self) -> list[dict[str, Any]]:
        """One dict per user turn: tokens, generate calls, timings (ms), interrupted, error."""
        return self._turn_stats

    @property
    def generate_calls(self) -> int:
        """``generate()`` calls made for user turns (the warm-up not counted)."""
        return self._generate_calls

    def can_generate_metrics(self) -> bool:
        return True

    async def stop_all_metrics(self):
        """On interruption: an answer cut off before its first token has no TTFB to report."""
        await self.cancel_ttfb_metrics()
        await super().stop_all_metrics()

    async def setup(self, setup: FrameProcessorSetup):
        """Load the model off the event loop (unless given) and warm it up.

        Raises:
            ModelUnavailableError: when the model cannot be loaded; the message is for the user.
        """
        await super().setup(setup)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxtral-generate")
        if self._bundle is None:
            c = self._config
            self._bundle = await asyncio.to_thread(load_voxtral, c.model, c.device, c.dtype, c.seed)
        if self._warmup:
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._warmup_sync)
            logger.debug(f"{self}: warmed up in {(time.perf_counter() - t0) * 1000:.0f} ms")

    async def cleanup(self):
        await super().cleanup()
        if self._turn is not None:
            await self._stop_turn()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, UserUtteranceFrame):
            await self._start_turn(frame)
        elif isinstance(frame, InterruptionFrame):
            await self._stop_turn()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            # A graceful end lets the answer in progress finish (max_new_tokens bounds it).
            await self._wait_turn()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop_turn()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    # ------------------------------------------------------------------------------------------

    def _warmup_sync(self) -> None:
        assert self._bundle is not None
        turn = ConversationTurn(
            "user", audio=audio_content_part(np.zeros(int(WARMUP_SECS * SAMPLE_RATE), np.float32))
        )
        conversation = build_conversation([turn], self._config.instructions)
        generate_streaming(self._bundle, conversation, max_new_tokens=WARMUP_NEW_TOKENS)

    async def _start_turn(self, frame: UserUtteranceFrame):
        if self._turn is not None:
            await self._stop_turn()
        if self._bundle is None or self._executor is None:
            await self.push_error("Voxtral received a user turn before its model was loaded")
            return
        self._history.append(ConversationTurn("user", audio=_utterance_audio(frame)))
        turn = _Turn(index=len(self._turn_stats))
        turn.stats = {
            "turn": turn.index,
            "speech_end_time": frame.speech_end_time,
            "audio_secs": frame.duration_secs,
            "prompt_tokens": None,
            "audio_tokens": None,
            "completion_tokens": 0,
            "generate_calls": 0,
            "ttft_ms": None,
            "first_token_ms": None,
            "prepare_ms": None,
            "generate_ms": None,
            "decode_tokens_per_s": None,
            "interrupted": False,
            "error": None,
            "text": "",
        }
        self._turn_stats.append(turn.stats)
        self._turn = turn
        await self.start_ttfb_metrics(start_time=frame.speech_end_time)
        turn.task = self.create_task(self._run_turn(turn), f"generate-turn-{turn.index}")

    async def _run_turn(self, turn: _Turn):
        """Stream one generation to the pipeline; pushes the response frames."""
        assert self._bundle is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        conversation = build_conversation(self._history, self._config.instructions)
        seed = None if self._config.seed is None else self._config.seed + turn.index
        c = self._config

        def on_delta(text: str, n_tokens: int) -> None:  # on the worker thread
            _call_soon(loop, queue.put_nowait, (text, n_tokens))

        def work() -> GenerationResult:
            try:
                self._generate_calls += 1
                turn.stats["generate_calls"] += 1
                return generate_streaming(
                    self._bundle,
                    conversation,
                    on_delta=on_delta,
                    cancel=turn.cancel,
                    max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature,
                    top_p=c.top_p,
                    seed=seed,
                )
            finally:
                _call_soon(loop, queue.put_nowait, _END)

        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        future = loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _END:
                text, _ = item
                if not text:
                    continue
                if not turn.text_parts:
                    await self.stop_ttfb_metrics()
                    turn.stats["ttft_ms"] = (time.time() - turn.stats["speech_end_time"]) * 1000
                turn.text_parts.append(text)
                await self.push_frame(LLMTextFrame(text))
            result = await future
            self._record_result(turn, result)
            await self.start_llm_usage_metrics(
                LLMTokenUsage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens,
                )
            )
        except asyncio.CancelledError:
            turn.stats["interrupted"] = True
            raise
        except Exception as e:
            turn.stats["error"] = f"{type(e).__name__}: {e}"
            await self.cancel_ttfb_metrics()
            await self.push_error(
                f"Voxtral generation failed on turn {turn.index}: {type(e).__name__}: {e}",
                exception=e,
                category=ErrorCategory.UNKNOWN,
            )
        finally:
            self._close_turn(turn)
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())

    def _record_result(self, turn: _Turn, result: GenerationResult) -> None:
        s = turn.stats
        s["prompt_tokens"] = result.prompt_tokens
        s["audio_tokens"] = result.audio_tokens
        s["completion_tokens"] = result.completion_tokens
        s["prepare_ms"] = result.prepare_s * 1000
        s["first_token_ms"] = None if result.first_token_s is None else result.first_token_s * 1000
        s["generate_ms"] = result.generate_s * 1000
        s["decode_tokens_per_s"] = result.decode_tokens_per_s
        logger.debug(
            f"{self}: turn {turn.index}: {result.prompt_tokens} prompt tokens ({result.audio_tokens} audio), "
            f"{result.completion_tokens} generated, prepare {s['prepare_ms']:.0f} ms, first token "
            f"{s['first_token_ms'] or 0:.0f} ms, generate {s['generate_ms']:.0f} ms"
        )

    def _close_turn(self, turn: _Turn) -> None:
        """Put the bot's answer, as far as it was sent downstream, into the history (once)."""
        if turn.closed:
            return
        turn.closed = True
        turn.stats["text"] = turn.text
        self._history.append(ConversationTurn("assistant", text=turn.text))
        if self._turn is turn:
            self._turn = None

    async def _stop_turn(self):
        """Cancel the generation in flight; the worker thread stops within one decode step."""
        turn = self._turn
        if turn is None:
            return
        turn.cancel.set()
        if turn.task is not None and not turn.task.done():
            turn.stats["interrupted"] = True
            await self.cancel_task(turn.task)
        self._close_turn(turn)
        await self.cancel_ttfb_metrics()
        logger.debug(f"{self}: turn {turn.index} stopped after {len(turn.text)} characters")

    async def _wait_turn(self):
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            await asyncio.wait({turn.task})


def _utterance_audio(frame: UserUtteranceFrame) -> dict[str, Any]:
    """The utterance as a chat-template audio part (mono, 16 kHz, base64 WAV)."""
    if frame.num_channels == 1:
        return audio_content_part(frame.audio, frame.sample_rate)
    samples = pcm16_to_float(frame.audio).reshape(-1, frame.num_channels).mean(axis=1)
    return audio_content_part(samples, frame.sample_rate)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Schedule on the event loop from the worker thread; a closed loop has nobody to tell."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass
