"""Metrics stage: a per-turn latency waterfall on one clock, and the session's percentiles.

Every mark is wall-clock seconds (``time.time()``), the clock pipecat's VAD frames and
``UserBotLatencyObserver`` use, and every latency is measured from the real end of the user's
speech (the last VAD stop minus its silence wait), where ``UserBotLatencyObserver`` starts its
clock too. Marks come from an observer on the whole pipeline (so each is taken where the frame is
*created*, not where it happens to pass this stage): the VAD stop and the turn confirmation from
the turn stage's utterance, the inference start and the first token from the Voxtral stage, the
first speech chunk from the chunker, the first audible TTS sample (Kokoro's output is trimmed of
leading silence) and the first bot audio leaving the output transport (``BotStartedSpeakingFrame``).

Between the marks, each turn also gets the time every stage spent (``STAGE_FIELDS``): the VAD's
silence wait, turn detection, Voxtral's time to first token (inference start to first token), the
wait for the first chunk's words, Kokoro's own TTFB (its ``TTFBMetricsData``: first chunk in to
first audio out) and what is left, ``overhead_ms``: the pipeline's own hops between stages.

Each closed turn goes to every sink: one loguru line, a JSONL file, a ``MetricsFrame``, Prometheus
histograms (:mod:`voxtral_pipeline.telemetry.prometheus`) and OpenTelemetry spans
(:mod:`voxtral_pipeline.telemetry.tracing`), the last two when configured.
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
    VADUserStartedSpeakingFrame,
)
from pipecat.metrics.metrics import MetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.services.tts_service import TTSService

from voxtral_pipeline.config import MetricsConfig
from voxtral_pipeline.frames import BotAudioStoppedFrame, UserUtteranceFrame
from voxtral_pipeline.telemetry.fields import (  # noqa: F401  (re-exported: bench, reports)
    LATENCY_FIELDS,
    PERCENTILES,
    STAGE_FIELDS,
    SUMMARY_FIELDS,
)


class VoiceTurnMetricsData(MetricsData):
    """One user turn's latency waterfall, in milliseconds (marks from the real end of user speech)."""

    turn: int
    interrupted: bool
    vad_stop_ms: float | None = None
    end_of_turn_ms: float | None = None
    inference_start_ms: float | None = None
    ttft_ms: float | None = None
    first_chunk_ms: float | None = None
    first_audio_ms: float | None = None
    voice_to_voice_ms: float | None = None
    vad_wait_ms: float | None = None
    turn_detect_ms: float | None = None
    voxtral_ttft_ms: float | None = None
    first_chunk_wait_ms: float | None = None
    kokoro_ttfb_ms: float | None = None
    overhead_ms: float | None = None
    barge_in_ms: float | None = None


def _diff_ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 1)


@dataclass
class TurnRecord:
    """Marks of one user turn (wall-clock seconds), plus Kokoro's own TTFB (seconds)."""

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
    tts_ttfb_secs: float | None = None
    reply_parts: list[str] = field(default_factory=list)
    interrupted: bool = False
    # Barge-in: onset of the user speech that cut the answer off, and the last bot sample heard.
    barge_in_onset_time: float | None = None
    bot_audio_end_time: float | None = None

    @property
    def barge_in_ms(self) -> float | None:
        """User speech onset to the last bot audio sample heard (0 if the bot was already silent)."""
        if not self.interrupted or self.barge_in_onset_time is None or self.bot_audio_end_time is None:
            return None
        return max(0.0, round((self.bot_audio_end_time - self.barge_in_onset_time) * 1000.0, 1))

    @property
    def reply_text(self) -> str:
        return "".join(self.reply_parts).strip()

    def _ms(self, t: float | None) -> float | None:
        return _diff_ms(self.speech_end_time, t)

    def latencies(self) -> dict[str, float | None]:
        """Every mark in milliseconds from the real end of user speech (``LATENCY_FIELDS``)."""
        return {
            "vad_stop_ms": self._ms(self.vad_stop_time),
            "end_of_turn_ms": self._ms(self.turn_end_time),
            "inference_start_ms": self._ms(self.inference_start_time),
            "ttft_ms": self._ms(self.first_token_time),
            "first_chunk_ms": self._ms(self.first_chunk_time),
            "first_audio_ms": self._ms(self.first_audible_time),
            "voice_to_voice_ms": self._ms(self.bot_started_time),
        }

    def stages(self) -> dict[str, float | None]:
        """Each stage's share of the voice-to-voice time (``STAGE_FIELDS``), None where unknown.

        ``overhead_ms`` is voice-to-voice minus the VAD wait, turn detection, Voxtral's time to
        first token, the first chunk's wait for its words and Kokoro's TTFB: the hops from the turn
        stage to Voxtral, from the chunker to Kokoro and from Kokoro out of the transport.
        """
        out: dict[str, float | None] = {
            "vad_wait_ms": _diff_ms(self.speech_end_time, self.vad_stop_time),
            "turn_detect_ms": _diff_ms(self.vad_stop_time, self.turn_end_time),
            "voxtral_ttft_ms": _diff_ms(self.inference_start_time, self.first_token_time),
            "first_chunk_wait_ms": _diff_ms(self.first_token_time, self.first_chunk_time),
            "kokoro_ttfb_ms": None if self.tts_ttfb_secs is None else round(self.tts_ttfb_secs * 1000, 1),
        }
        v2v = self._ms(self.bot_started_time)
        parts = list(out.values())
        out["overhead_ms"] = (
            None if v2v is None or any(p is None for p in parts) else round(v2v - sum(parts), 1)
        )
        return out

    def figures(self) -> dict[str, float | None]:
        """Marks and stage times together (``SUMMARY_FIELDS``)."""
        return {**self.latencies(), **self.stages()}

    def to_report(self, origin: float) -> dict[str, Any]:
        return {
            "index": self.index,
            "user_start_s": round(self.speech_start_time - origin, 3),
            "user_end_s": round(self.speech_end_time - origin, 3),
            "reply_text": self.reply_text,
            "interrupted": self.interrupted,
            "barge_in_ms": self.barge_in_ms,
            **self.figures(),
        }


def percentiles(values: list[float | None]) -> dict[str, float | None]:
    """p50/p90/p95 (linear interpolation), None where there is no value."""
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(clean, p)), 1) for p in PERCENTILES}


def summarize(turns: list[TurnRecord]) -> dict[str, Any]:
    """Turn count and p50/p90/p95 of every mark and stage time, and of the barge-in times."""
    figures = [t.figures() for t in turns]
    out: dict[str, Any] = {"turns": len(turns)}
    for name in SUMMARY_FIELDS:
        out[name] = percentiles([f[name] for f in figures])
    out["barge_in_ms"] = percentiles([t.barge_in_ms for t in turns])
    return out


class _MetricsObserver(BaseObserver):
    """Feeds the first push of every frame, with the time it was pushed, to the metrics stage."""

    def __init__(self, stage: MetricsStage):
        super().__init__(observe_every_push=False)
        self._stage = stage

    async def on_push_frame(self, data: FramePushed):
        # Observers may run late; convert the pipeline-clock push time back to wall-clock.
        lag = (data.source.get_clock().get_time() - data.timestamp) / 1e9
        await self._stage.observe(data.frame, data.direction, time.time() - max(lag, 0.0), data.source)


class MetricsStage(FrameProcessor):
    """Per-turn latency waterfall, logged, appended to JSONL, pushed as ``MetricsFrame``s.

    Add :attr:`observer` to the ``PipelineWorker``'s observers; the stage itself sits anywhere
    downstream of the turn stage (usually just before the output transport). With
    ``config.prometheus`` every closed turn feeds the process's histograms; with tracing enabled
    on the worker (``config.tracing``) it becomes OpenTelemetry spans under pipecat's
    conversation span.
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
        self._speech_onset: float | None = None  # of the user's latest speech (VAD start - start_secs)
        self._prometheus = None
        self._tracer = None
        if self._config.prometheus:
            from voxtral_pipeline.telemetry.prometheus import TurnHistograms

            self._prometheus = TurnHistograms.shared(self._config.histogram_buckets_ms)

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

    async def setup(self, setup: FrameProcessorSetup):
        """Pick up the worker's tracing context (``PipelineWorker(enable_tracing=True)``)."""
        await super().setup(setup)
        if setup.enable_tracing and setup.tracing_context is not None:
            from voxtral_pipeline.telemetry.tracing import TurnSpans

            self._tracer = TurnSpans(setup.tracing_context)

    async def observe(self, frame: Frame, direction: FrameDirection, at: float, source: Any = None):
        """Record a mark for a frame first pushed by ``source`` at wall-clock time ``at``."""
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
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_onset = frame.timestamp - frame.start_secs
            return
        if isinstance(frame, InterruptionFrame):
            turn = self._current
            # Cut off while generating, while speaking, or with speech synthesized but not yet heard.
            unheard = turn is not None and turn.first_chunk_time is not None and turn.bot_started_time is None
            if turn and (self._response_open or self._bot_speaking or unheard):
                turn.interrupted = True
                if self._bot_speaking and self._current.barge_in_onset_time is None:
                    self._current.barge_in_onset_time = self._speech_onset
            self._response_open = False
            return
        if isinstance(frame, BotAudioStoppedFrame):
            # From the playback tracker after the output: when the bot really fell silent.
            if self._current and self._current.interrupted and self._current.bot_audio_end_time is None:
                self._current.bot_audio_end_time = frame.last_audio_time
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
        elif isinstance(frame, MetricsFrame) and isinstance(source, TTSService):
            # The TTS's own TTFB for the turn's first chunk: synthesis time as the service sees it.
            if turn.tts_ttfb_secs is None and turn.first_chunk_time is not None:
                ttfb = next((d.value for d in frame.data if isinstance(d, TTFBMetricsData)), None)
                if ttfb is not None:
                    turn.tts_ttfb_secs = float(ttfb)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._close_current(push=isinstance(frame, EndFrame))
        await self.push_frame(frame, direction)

    async def _close_current(self, push: bool = True):
        turn, self._current = self._current, None
        if turn is None:
            return
        figures = turn.figures()
        if self._config.log_turns:
            logger.info(turn_line(turn))
        if self._config.jsonl:
            self._append_jsonl(turn)
        if self._prometheus is not None:
            self._prometheus.observe(figures, turn.interrupted, turn.barge_in_ms)
        if self._tracer is not None:
            self._tracer.emit(turn)
        if push and self.metrics_enabled:
            data = VoiceTurnMetricsData(
                processor=self.name,
                turn=turn.index,
                interrupted=turn.interrupted,
                barge_in_ms=turn.barge_in_ms,
                **figures,
            )
            await self.push_frame(MetricsFrame(data=[data]))

    def _append_jsonl(self, turn: TurnRecord) -> None:
        path = Path(self._config.jsonl)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(turn.to_report(self._origin or turn.speech_start_time)) + "\n")
        except OSError as e:  # a full disk or a bad path must not end the conversation
            logger.warning(f"{self}: cannot append to {path}: {e}")

    async def finish(self) -> None:
        """Close the last turn (the session is over) and log the session's percentiles."""
        await self._close_current(push=False)
        if self._config.log_turns and self._turns:
            logger.info(summary_line(self.summary()))

    def summary(self) -> dict[str, Any]:
        """Turn count and p50/p90/p95 of every mark and stage time."""
        return summarize(self._turns)

    def report(self) -> dict[str, Any]:
        """The JSON report: every turn on the input timeline, and the summary."""
        origin = (
            self._origin
            if self._origin is not None
            else (self._turns[0].speech_start_time if self._turns else 0)
        )
        return {"turns": [t.to_report(origin) for t in self._turns], "summary": self.summary()}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def turn_line(turn: TurnRecord) -> str:
    """One concise line: voice-to-voice, then each stage's share of it (ms)."""
    s = turn.stages()
    flag = " interrupted" if turn.interrupted else ""
    return (
        f"turn {turn.index}{flag}: v2v={_fmt(turn.latencies()['voice_to_voice_ms'])}ms = "
        f"vad {_fmt(s['vad_wait_ms'])} + turn {_fmt(s['turn_detect_ms'])} + "
        f"voxtral {_fmt(s['voxtral_ttft_ms'])} + chunk {_fmt(s['first_chunk_wait_ms'])} + "
        f"kokoro {_fmt(s['kokoro_ttfb_ms'])} + overhead {_fmt(s['overhead_ms'])} "
        f"reply={turn.reply_text[:60]!r}"
    )


def summary_line(summary: dict[str, Any]) -> str:
    """The session's p50/p90/p95 of voice-to-voice and overhead, in one line."""

    def trio(name: str) -> str:
        p = summary[name]
        return "/".join(_fmt(p[f"p{q}"]) for q in PERCENTILES)

    return (
        f"session: {summary['turns']} turns, p50/p90/p95 voice-to-voice {trio('voice_to_voice_ms')} ms, "
        f"first audio {trio('first_audio_ms')} ms, overhead {trio('overhead_ms')} ms"
    )
