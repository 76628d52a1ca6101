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
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.kokoro import KokoroTTSService
from voxtral_pipeline.processors.metrics import MetricsStage
from voxtral_pipeline.processors.turns import TurnStage
from voxtral_pipeline.processors.voxtral import VoxtralLLMService

# Loading a 3B model from disk (and warming it up) takes far longer than pipecat's 20 s default.
SETUP_TIMEOUT_SECS = 900.0


def build_transport(config: PipelineConfig) -> BaseTransport:
    """The transport named by ``config.transport.kind``."""
    kind = config.transport.kind
    if kind == "file":
        from voxtral_pipeline.transports.file import FileTransport

        return FileTransport(
            config.transport.file,
            in_sample_rate=config.audio.in_sample_rate,
            out_sample_rate=config.audio.out_sample_rate,
        )
    raise ValueError(f"unknown transport {kind!r}")


@dataclass
class VoicePipeline:
    """A built pipeline with handles on its stages, ready to run."""

    config: PipelineConfig
    transport: BaseTransport
    turns: TurnStage
    voxtral: VoxtralLLMService
    chunker: WordChunker
    tts: KokoroTTSService
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
        return self.metrics.report()


def build_pipeline(
    config: PipelineConfig,
    transport: BaseTransport | None = None,
    *,
    voxtral: VoxtralLLMService | None = None,
    tts: KokoroTTSService | None = None,
    observers: list | None = None,
) -> VoicePipeline:
    """Assemble transport, turn stage, Voxtral, chunker, Kokoro and metrics into a worker.

    ``voxtral`` and ``tts`` may be passed in to share already loaded models (tests, or several
    sessions in one process); otherwise they are built from the config and load in ``setup()``.
    """
    transport = transport or build_transport(config)
    turns = TurnStage(config.turns)
    voxtral = voxtral or VoxtralLLMService(config.voxtral)
    chunker = WordChunker(config.chunker)
    tts = tts or KokoroTTSService(config.kokoro)
    metrics = MetricsStage(config.metrics)
    pipeline = Pipeline([transport.input(), turns, voxtral, chunker, tts, metrics, transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=config.audio.in_sample_rate,
            audio_out_sample_rate=config.audio.out_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[metrics.observer, *(observers or [])],
        enable_rtvi=False,
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
