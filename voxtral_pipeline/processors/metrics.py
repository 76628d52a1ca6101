"""Metrics stage: a per-turn latency waterfall on one clock, and the session's percentiles.

Every mark is wall-clock seconds (``time.time()``), the clock pipecat's VAD frames and
``UserBotLatencyObserver`` use, and every latency is measured from the real end of the user's
speech (the last VAD stop minus its silence wait), where ``UserBotLatencyObserver`` starts its
clock too. Marks come from an observer on the whole pipeline (so each is taken where the frame is
*created*, not where it happens to pass this stage): the utterance from the turn stage, the first
token from the Voxtral stage, the first speech chunk from the chunker, the first audible TTS sample
(Kokoro's output is trimmed of leading silence) and the first bot audio leaving the output
transport (``BotStartedSpeakingFrame``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import MetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voxtral_pipeline.config import MetricsConfig
from voxtral_pipeline.frames import UserUtteranceFrame

LATENCY_FIELDS = ("end_of_turn_ms", "ttft_ms", "first_chunk_ms", "first_audio_ms", "voice_to_voice_ms")
PERCENTILES = (50, 90, 95)


class VoiceTurnMetricsData(MetricsData):
    """One user turn's latency waterfall, in milliseconds from the real end of user speech."""

    turn: int
    interrupted: bool
    end_of_turn_ms: float | None = None
    ttft_ms: float | None = None
    first_chunk_ms: float | None = None
    first_audio_ms: float | None = None
    voice_to_voice_ms: float | None = None


@dataclass
class TurnRecord:
    """Marks of one user turn (wall-clock seconds)."""

    index: int
    speech_start_time: float
    speech_end_time: float
    vad_stop_time: float
    turn_end_time: float
    inference_start_time: float | None = None
    first_token_time: float | None = None
    first_chunk_time: float | None = None
    first_audible_time: float | None = None
    bot_started_time: float | None = None
    reply_parts: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def reply_text(self) -> str:
        return "".join(self.reply_parts).strip()

    def _ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.speech_end_time) * 1000.0, 1)

    def latencies(self) -> dict[str, float | None]:
        return {
            "end_of_turn_ms": self._ms(self.turn_end_time),
            "ttft_ms": self._ms(self.first_token_time),
            "first_chunk_ms": self._ms(self.first_chunk_time),
            "first_audio_ms": self._ms(self.first_audible_time),
            "voice_to_voice_ms": self._ms(self.bot_started_time),
        }

    def to_report(self, origin: float) -> dict[str, Any]:
        return {
            "index": self.index,
            "user_start_s": round(self.speech_start_time - origin, 3),
            "user_end_s": round(self.speech_end_time - origin, 3),
            "reply_text": self.reply_text,
            "interrupted": self.interrupted,
            **self.latencies(),
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p95 (linear interpolation), None where there is no value."""
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(clean, p)), 1) for p in PERCENTILES}


class _MetricsObserver(BaseObserver):
    """Feeds the first push of every frame, with the time it was pushed, to the metrics stage."""

    def __init__(self, stage: MetricsStage):
        super().__init__(observe_every_push=False)
        self._stage = stage

    async def on_push_frame(self, data: FramePushed):
        # Observers may run late; convert the pipeline-clock push time back to wall-clock.
        lag = (data.source.get_clock().get_time() - data.timestamp) / 1e9
        await self._stage.observe(data.frame, data.direction, time.time() - max(lag, 0.0))


class MetricsStage(FrameProcessor):
    """Per-turn latency waterfall, logged, appended to JSONL, and pushed as ``MetricsFrame``s.

    Add :attr:`observer` to the ``PipelineWorker``'s observers; the stage itself sits anywhere
    downstream of the turn stage (usually just before the output transport).
    """

    def __init__(self, config: MetricsConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self._config = config or MetricsConfig()
        self._observer = _MetricsObserver(self)
        self._turns: list[TurnRecord] = []
        self._current: TurnRecord | None = None
        self._origin: float | None = None
        self._response_open = False
        self._bot_speaking = False

    @property
    def observer(self) -> BaseObserver:
        return self._observer

    @property
    def turns(self) -> list[TurnRecord]:
        return list(self._turns)

    @property
    def origin(self) -> float | None:
        """Wall-clock time of the first input audio sample: zero on the report's timeline."""
        return self._origin

    def can_generate_metrics(self) -> bool:
        return True

    async def observe(self, frame: Frame, direction: FrameDirection, at: float):
        """Record a mark for a frame first pushed at wall-clock time ``at``."""
        if isinstance(frame, InputAudioRawFrame):
            if self._origin is None:
                self._origin = at - len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
            return
        if isinstance(frame, UserUtteranceFrame):
            await self._close_current()
            self._current = TurnRecord(
                index=len(self._turns),
                speech_start_time=frame.speech_start_time,
                speech_end_time=frame.speech_end_time,
                vad_stop_time=frame.vad_stop_time,
                turn_end_time=frame.turn_end_time,
            )
            self._turns.append(self._current)
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            if direction == FrameDirection.DOWNSTREAM:
                self._bot_speaking = True
                turn = self._current
                if turn and turn.bot_started_time is None and turn.first_audible_time is not None:
                    turn.bot_started_time = at
            return
        if isinstance(frame, BotStoppedSpeakingFrame):
            if direction == FrameDirection.DOWNSTREAM:
                self._bot_speaking = False
            return
        if isinstance(frame, InterruptionFrame):
            if self._current and (self._response_open or self._bot_speaking):
                self._current.interrupted = True
            self._response_open = False
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._response_open = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._response_open = False
        turn = self._current
        if turn is None:
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            turn.inference_start_time = turn.inference_start_time or at
        elif isinstance(frame, LLMTextFrame):
            turn.first_token_time = turn.first_token_time or at
            turn.reply_parts.append(frame.text)
        elif isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame):
            if not frame.skip_tts:
                turn.first_chunk_time = turn.first_chunk_time or at
        elif isinstance(frame, TTSAudioRawFrame):
            turn.first_audible_time = turn.first_audible_time or at

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._close_current(push=isinstance(frame, EndFrame))
        await self.push_frame(frame, direction)

    async def _close_current(self, push: bool = True):
        turn, self._current = self._current, None
        if turn is None:
            return
        lat = turn.latencies()
        if self._config.log_turns:
            shown = " ".join(f"{k.removesuffix('_ms')}={_fmt(v)}" for k, v in lat.items())
            flag = " interrupted" if turn.interrupted else ""
            logger.info(f"turn {turn.index}{flag}: {shown} reply={turn.reply_text[:60]!r}")
        if self._config.jsonl:
            path = Path(self._config.jsonl)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(turn.to_report(self._origin or turn.speech_start_time)) + "\n")
        if push and self.metrics_enabled:
            data = VoiceTurnMetricsData(
                processor=self.name, turn=turn.index, interrupted=turn.interrupted, **lat
            )
            await self.push_frame(MetricsFrame(data=[data]))

    async def finish(self) -> None:
        """Close the last turn (the session is over)."""
        await self._close_current(push=False)

    def summary(self) -> dict[str, Any]:
        """Turn count and p50/p90/p95 of every latency field."""
        out: dict[str, Any] = {"turns": len(self._turns)}
        for name in LATENCY_FIELDS:
            out[name] = percentiles([t.latencies()[name] for t in self._turns])
        return out

    def report(self) -> dict[str, Any]:
        """The JSON report: every turn on the input timeline, and the summary."""
        origin = (
            self._origin
            if self._origin is not None
            else (self._turns[0].speech_start_time if self._turns else 0)
        )
        return {"turns": [t.to_report(origin) for t in self._turns], "summary": self.summary()}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms"
