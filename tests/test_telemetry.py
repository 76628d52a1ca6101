"""Where turns go besides the log: OpenTelemetry spans through pipecat's tracing, and /metrics."""

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    EndFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.tests.utils import SleepFrame
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import MetricsConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.metrics import MetricsStage

pytest.importorskip("opentelemetry.sdk")


@pytest.fixture(scope="module")
def spans():
    """An in-memory exporter on the process's tracer provider (installed once: OTel allows one)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def test_turn_becomes_a_voice_turn_span_with_stage_children_under_the_conversation(spans):
    spans.clear()
    m = MetricsStage(MetricsConfig(log_turns=False, tracing=True))
    worker = PipelineWorker(
        Pipeline([m]),
        params=PipelineParams(enable_metrics=True),
        observers=[m.observer],
        enable_tracing=True,
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    utterance = UserUtteranceFrame(
        audio=b"\x00\x00" * 160,
        sample_rate=16000,
        speech_start_time=1000.0,
        speech_end_time=1001.0,
        vad_stop_time=1001.2,
        turn_end_time=1001.25,
    )
    await worker.queue_frames(
        [
            utterance,
            LLMFullResponseStartFrame(),
            LLMTextFrame(" hi"),
            AggregatedTextFrame(" hi ", TextType.SENTENCE),
            TTSAudioRawFrame(b"\x00\x00" * 480, 24000, 1),
            BotStartedSpeakingFrame(),
            LLMFullResponseEndFrame(),
            SleepFrame(sleep=0.05),
            EndFrame(),
        ]
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()

    finished = {s.name: s for s in spans.get_finished_spans()}
    assert "conversation" in finished  # pipecat's own, from PipelineWorker(enable_tracing=True)
    turn = finished["voice_turn"]
    assert turn.parent is not None and turn.parent.span_id == finished["conversation"].context.span_id
    assert turn.start_time == int(1001.0 * 1e9)
    assert turn.attributes["turn.index"] == 0
    assert turn.attributes["latency.vad_wait_ms"] == pytest.approx(200.0)
    children = {
        s.name: s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == turn.context.span_id
    }
    assert {"vad_wait", "turn_detect", "voxtral_ttft", "first_chunk_wait", "output"} <= set(children)
    vad = children["vad_wait"]
    assert (vad.end_time - vad.start_time) == pytest.approx(0.2e9, abs=1e3)
    detect = children["turn_detect"]
    assert detect.start_time == vad.end_time and (detect.end_time - detect.start_time) == pytest.approx(
        0.05e9, abs=1e3
    )


async def test_no_spans_without_tracing(spans):
    spans.clear()
    m = MetricsStage(MetricsConfig(log_turns=False))
    worker = PipelineWorker(Pipeline([m]), observers=[m.observer], enable_rtvi=False, idle_timeout_secs=None)
    await worker.queue_frames([SleepFrame(sleep=0.01), EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    assert [s.name for s in spans.get_finished_spans() if s.name == "voice_turn"] == []


def test_metrics_endpoint_serves_histograms_only_when_enabled():
    pytest.importorskip("prometheus_client")
    from fastapi.testclient import TestClient

    from tests.transport_helpers import dummy_config
    from voxtral_pipeline.server import BotServer

    on = BotServer(dummy_config("websocket", **{"metrics.prometheus": True}))
    response = TestClient(on.app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE voxtral_pipeline_latency_ms histogram" in response.text

    guarded = BotServer(
        dummy_config("websocket", **{"metrics.prometheus": True, "transport.server.token": "s3"})
    )
    assert TestClient(guarded.app).get("/metrics").status_code == 401
    assert TestClient(guarded.app).get("/metrics", headers={"Authorization": "Bearer s3"}).status_code == 200

    off = BotServer(dummy_config("websocket"))
    assert TestClient(off.app).get("/metrics").status_code == 404


def test_tracing_without_an_endpoint_leaves_the_provider_to_the_application():
    from voxtral_pipeline.telemetry.tracing import configure_tracing

    assert configure_tracing(MetricsConfig(tracing=True)) is False


def test_run_without_the_metrics_extra_is_a_one_line_error(monkeypatch, capsys):
    import importlib.util

    from voxtral_pipeline.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real(name, *a)
    )
    code = main(
        [
            "run",
            "-t",
            "websocket",
            "-m",
            "dummy:tiny",
            "--tts-model",
            "dummy:tiny",
            "--set",
            "metrics.prometheus=true",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.prometheus needs prometheus_client" in err and len(err.splitlines()) == 1


async def test_interrupted_turn_adds_a_barge_in_span_beside_it(spans):
    from pipecat.frames.frames import InterruptionFrame, VADUserStartedSpeakingFrame
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.utils.tracing.tracing_context import TracingContext

    from voxtral_pipeline.frames import BotAudioStoppedFrame
    from voxtral_pipeline.telemetry.tracing import TurnSpans

    spans.clear()
    m = MetricsStage(MetricsConfig(log_turns=False))
    down = FrameDirection.DOWNSTREAM
    utterance = UserUtteranceFrame(
        audio=b"\x00\x00" * 160,
        sample_rate=16000,
        speech_start_time=100.0,
        speech_end_time=101.0,
        vad_stop_time=101.2,
        turn_end_time=101.25,
    )
    await m.observe(utterance, down, 101.25)
    await m.observe(LLMFullResponseStartFrame(), down, 101.26)
    await m.observe(LLMTextFrame(" hi"), down, 101.3)
    await m.observe(AggregatedTextFrame(" hi ", TextType.SENTENCE), down, 101.31)
    await m.observe(TTSAudioRawFrame(b"\x00\x00" * 480, 24000, 1), down, 101.4)
    await m.observe(BotStartedSpeakingFrame(), down, 101.41)
    await m.observe(VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=102.2), down, 102.2)
    await m.observe(InterruptionFrame(), down, 102.21)
    await m.observe(
        BotAudioStoppedFrame(interruption_time=102.21, last_audio_time=102.25),
        FrameDirection.UPSTREAM,
        102.26,
    )
    (turn,) = m.turns
    assert turn.barge_in_ms == pytest.approx(250.0)
    TurnSpans(TracingContext()).emit(turn)
    finished = {s.name: s for s in spans.get_finished_spans()}
    barge = finished["barge_in"]
    assert barge.start_time == int(102.0 * 1e9) and (barge.end_time - barge.start_time) == pytest.approx(
        0.25e9, abs=1e3
    )
    assert finished["voice_turn"].attributes["latency.barge_in_ms"] == pytest.approx(250.0)
    await m.finish()
    assert m.summary()["barge_in_ms"]["p50"] == pytest.approx(250.0)
