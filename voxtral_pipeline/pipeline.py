"""Build a pipecat pipeline from a :class:`~voxtral_pipeline.config.PipelineConfig`.

The stage list is the same whatever the transport: only ``transport.input()`` and
``transport.output()`` change, so the GPU-bound Voxtral stage never knows which one is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker, ProcessorUnusablePolicy
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.metrics import MetricsStage
from voxtral_pipeline.processors.playback import PlaybackTracker
from voxtral_pipeline.processors.rtvi import ObjectsOnlyRTVIProcessor
from voxtral_pipeline.processors.turns import TurnStage
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.stats import TurnStats
from voxtral_pipeline.session import build_services

# Loading a 3B model from disk (and warming it up) takes far longer than pipecat's 20 s default.
SETUP_TIMEOUT_SECS = 900.0


def build_transport(config: PipelineConfig, **kwargs: Any) -> BaseTransport:
    """The transport named by ``config.transport.kind``, one module per transport.

    Keyword arguments carry what a session brings with it: ``connection`` (a SmallWebRTC peer
    connection, required), ``websocket`` (an accepted FastAPI WebSocket, required),
    ``room`` (a Daily room; the configured one when absent) and ``devices`` (local audio devices;
    PortAudio's list when absent). Each transport module raises its own clear error
    (``AudioInputError``, ``DailyError``, ``LocalAudioError``) when it cannot be built.
    """
    kind = config.transport.kind
    if kind == "file":
        from voxtral_pipeline.transports.file import FileTransport

        return FileTransport(
            config.transport.file,
            in_sample_rate=config.audio.in_sample_rate,
            out_sample_rate=config.audio.out_sample_rate,
        )
    if kind == "webrtc":
        from voxtral_pipeline.transports.webrtc import build_webrtc_transport

        if kwargs.get("connection") is None:
            # A fresh peer connection nobody will ever connect would wait forever: the bot's server
            # (voxtral_pipeline.server) builds one per browser offer.
            raise ValueError(
                "the webrtc transport is built per browser connection: pass connection= "
                "(or run `voxtral-pipeline run`, which serves the page and the offers)"
            )
        return build_webrtc_transport(config, kwargs["connection"])
    if kind == "websocket":
        from voxtral_pipeline.transports.websocket import build_websocket_transport

        if kwargs.get("websocket") is None:
            raise ValueError("the websocket transport is built per connection: pass websocket=")
        return build_websocket_transport(config, kwargs["websocket"])
    if kind == "daily":
        from voxtral_pipeline.transports.daily import build_daily_transport

        return build_daily_transport(config, kwargs.get("room"))
    if kind == "local":
        from voxtral_pipeline.transports.local import build_local_transport

        return build_local_transport(config, kwargs.get("devices"))
    raise ValueError(f"unknown transport {kind!r}")


@dataclass
class VoicePipeline:
    """A built pipeline with handles on its stages, ready to run."""

    config: PipelineConfig
    transport: BaseTransport
    turns: TurnStage
    voxtral: VoxtralLLMService
    chunker: WordChunker | None  # None with stock_aggregation
    tts: TTSService
    metrics: MetricsStage
    pipeline: Pipeline
    worker: PipelineWorker
    errors: list[ErrorFrame] = field(default_factory=list)

    @property
    def fatal_error(self) -> BaseException | None:
        """The first error that stopped a stage from working (a model that could not load, say)."""
        for frame in self.errors:
            # pipecat reports a processor whose setup() raised as a non-fatal "Error setting up
            # processor" frame, and then never starts the pipeline: that stops the session too.
            setup_failed = frame.error.startswith("Error setting up processor")
            if isinstance(frame.exception, ModelUnavailableError) or frame.fatal or setup_failed:
                return frame.exception or RuntimeError(frame.error)
        return None

    async def run(self) -> dict[str, Any]:
        """Run until the transport ends the session; return the metrics report."""
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        await runner.run()
        await self.metrics.finish()
        report = merge_voxtral_stats(self.metrics.report(), self.metrics.turns, self.voxtral.turn_stats)
        # Speculative starts (turns.speculative): confirmed ones are the turns' own inferences.
        report["speculation"] = self.voxtral.speculation_counts
        return report


#: Transports with a client on the other end that can speak RTVI.
RTVI_TRANSPORTS = ("webrtc", "websocket", "daily")


def rtvi_enabled(config: PipelineConfig) -> bool:
    """Whether the worker adds pipecat's RTVI processor and observer (``transport.rtvi``, live transports)."""
    return config.transport.rtvi and config.transport.kind in RTVI_TRANSPORTS


#: Voxtral stage numbers added to each turn of the JSON report (fields of ``TurnStats``).
VOXTRAL_REPORT_FIELDS = (
    "prompt_tokens",
    "prefill_tokens",
    "prefill_ms",
    "ahead_prefill_tokens",
    "ahead_prefill_ms",
    "generate_calls",
    "speculation_saved_ms",
)


def merge_voxtral_stats(report: dict[str, Any], records: list, stats: list[TurnStats]) -> dict[str, Any]:
    """Add the Voxtral stage's per-turn token counts to the metrics report (matched on the end of speech)."""
    by_end = {s.speech_end_time: s for s in stats}
    for record, turn in zip(records, report["turns"], strict=False):
        s = by_end.get(record.speech_end_time)
        for name in VOXTRAL_REPORT_FIELDS:
            turn[name] = None if s is None else getattr(s, name)
        if s is not None and s.dropped:
            turn["dropped"] = s.dropped
    return report


def build_pipeline(
    config: PipelineConfig,
    transport: BaseTransport | None = None,
    *,
    voxtral: VoxtralLLMService | None = None,
    tts: TTSService | None = None,
    observers: list | None = None,
    stock_aggregation: bool = False,
) -> VoicePipeline:
    """Assemble transport, turn stage, Voxtral, chunker, Kokoro and metrics into a worker.

    ``voxtral`` and ``tts`` may be passed in to share already loaded models (tests, or several
    sessions in one process); otherwise they are built from the config and load in ``setup()``.
    ``stock_aggregation`` leaves the word chunker out and lets the TTS service aggregate the tokens
    itself (pipecat's ``TextAggregationMode.SENTENCE``): the baseline ``voxtral-pipeline bench``
    compares our chunker with (a ``tts`` passed in must then be built in that mode).
    """
    transport = transport or build_transport(config)
    turns = TurnStage(config.turns)
    if voxtral is None or tts is None:
        built_voxtral, built_tts = build_services(config, stock_aggregation=stock_aggregation)
        voxtral, tts = voxtral or built_voxtral, tts or built_tts
    voxtral.turn_source = "utterance"  # the turn stage's UserUtteranceFrames are the spoken turns
    chunker = None if stock_aggregation else WordChunker(config.chunker)
    metrics = MetricsStage(config.metrics)
    stages = [turns, voxtral, *([chunker] if chunker else []), tts, metrics]
    # After the output: sees what was played, tells the Voxtral stage what the bot really said.
    playback = PlaybackTracker()
    pipeline = Pipeline([transport.input(), *stages, transport.output(), playback])
    if config.metrics.tracing:
        from voxtral_pipeline.telemetry.tracing import configure_tracing

        configure_tracing(config.metrics)
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=config.audio.in_sample_rate,
            audio_out_sample_rate=config.audio.out_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[metrics.observer, *(observers or [])],
        # pipecat's conversation/turn/service spans; the metrics stage adds the waterfall's.
        enable_tracing=config.metrics.tracing,
        # pipecat's RTVI (RTVIProcessor + RTVIObserver) for pipecat's own clients: bot-ready,
        # bot-llm-text, speaking state, transcripts, metrics. Only live transports have a client.
        enable_rtvi=rtvi_enabled(config),
        rtvi_processor=ObjectsOnlyRTVIProcessor() if rtvi_enabled(config) else None,
        idle_timeout_secs=None,
        setup_timeout_secs=SETUP_TIMEOUT_SECS,
        # A stage that cannot work (a model that failed to load) leaves no session worth running.
        processor_unusable_policy=ProcessorUnusablePolicy.CANCEL,
    )
    built = VoicePipeline(config, transport, turns, voxtral, chunker, tts, metrics, pipeline, worker)

    @worker.event_handler("on_pipeline_error")
    async def _on_error(_worker, frame: ErrorFrame):
        built.errors.append(frame)
        logger.debug(f"pipeline error: {frame.error}")

    return built
