"""Metrics stage: the per-turn waterfall from the real end of speech, percentiles, report, JSONL."""

import json

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.text.base_text_aggregator import TextType

from voxtral_pipeline.config import MetricsConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.metrics import MetricsStage, percentiles

DOWN = FrameDirection.DOWNSTREAM


def _utterance(start: float, end: float) -> UserUtteranceFrame:
    return UserUtteranceFrame(
        audio=b"\x00\x00" * 160,
        sample_rate=16000,
        speech_start_time=start,
        speech_end_time=end,
        vad_stop_time=end + 0.2,
        turn_end_time=end + 0.3,
    )


async def _turn(m: MetricsStage, t0: float, text: str = " Hi there", interrupt: bool = False):
    await m.observe(_utterance(t0 - 1.0, t0), DOWN, t0 + 0.3)
    await m.observe(LLMFullResponseStartFrame(), DOWN, t0 + 0.31)
    for i, tok in enumerate(text.split(" ")[1:]):
        await m.observe(LLMTextFrame(" " + tok), DOWN, t0 + 0.35 + 0.01 * i)
    await m.observe(AggregatedTextFrame(" Hi ", TextType.SENTENCE), DOWN, t0 + 0.36)
    await m.observe(TTSTextFrame("Hi", TextType.SENTENCE), DOWN, t0 + 0.9)  # display text: not a chunk
    await m.observe(TTSAudioRawFrame(b"\x00\x00" * 480, 24000, 1), DOWN, t0 + 0.45)
    await m.observe(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM, t0 + 0.40)  # upstream copy ignored
    await m.observe(BotStartedSpeakingFrame(), DOWN, t0 + 0.47)
    if interrupt:
        await m.observe(InterruptionFrame(), DOWN, t0 + 0.8)
    else:
        await m.observe(LLMFullResponseEndFrame(), DOWN, t0 + 0.5)
        await m.observe(BotStoppedSpeakingFrame(), DOWN, t0 + 1.5)


async def test_waterfall_from_real_end_of_speech(tmp_path):
    jsonl = tmp_path / "turns.jsonl"
    m = MetricsStage(MetricsConfig(jsonl=jsonl, log_turns=False))
    await m.observe(InputAudioRawFrame(b"\x00\x00" * 320, 16000, 1), DOWN, 100.02)
    await _turn(m, 102.0)
    await _turn(m, 110.0, text=" Stop me now", interrupt=True)
    await m.finish()
    report = m.report()
    first, second = report["turns"]
    assert first["index"] == 0 and second["index"] == 1
    assert first["user_start_s"] == pytest.approx(1.0) and first["user_end_s"] == pytest.approx(2.0)
    assert first["ttft_ms"] == pytest.approx(350.0)
    assert first["first_chunk_ms"] == pytest.approx(360.0)
    assert first["first_audio_ms"] == pytest.approx(450.0)
    assert first["voice_to_voice_ms"] == pytest.approx(470.0)
    assert first["end_of_turn_ms"] == pytest.approx(300.0)
    assert first["reply_text"] == "Hi there" and not first["interrupted"]
    assert second["interrupted"] and second["reply_text"] == "Stop me now"
    summary = report["summary"]
    assert summary["turns"] == 2
    assert summary["voice_to_voice_ms"]["p50"] == pytest.approx(470.0)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1]


async def test_next_turn_after_finished_reply_is_not_an_interruption():
    m = MetricsStage(MetricsConfig(log_turns=False))
    await _turn(m, 10.0)
    await m.observe(InterruptionFrame(), DOWN, 14.0)  # the user's next turn starting
    await _turn(m, 15.0)
    await m.finish()
    assert [t["interrupted"] for t in m.report()["turns"]] == [False, False]


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p90": None, "p95": None}
    p = percentiles([100.0, 200.0, None, 300.0, 400.0, float("nan")])
    assert p["p50"] == 250.0 and p["p90"] == pytest.approx(370.0) and p["p95"] == pytest.approx(385.0)


async def test_stage_in_a_pipeline_pushes_one_metrics_frame_per_turn():
    from pipecat.frames.frames import MetricsFrame
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.tests.utils import SleepFrame, run_test

    from voxtral_pipeline.processors.metrics import VoiceTurnMetricsData

    m = MetricsStage(MetricsConfig(log_turns=False))
    frames = [
        _utterance(1.0, 2.0),
        LLMFullResponseStartFrame(),
        LLMTextFrame(" hi"),
        LLMFullResponseEndFrame(),
        SleepFrame(sleep=0.05),
        _utterance(3.0, 4.0),
        SleepFrame(sleep=0.05),
    ]
    down, _ = await run_test(
        m,
        frames_to_send=frames,
        observers=[m.observer],
        pipeline_params=PipelineParams(enable_metrics=True),
    )
    turn_metrics = [
        d for f in down if isinstance(f, MetricsFrame) for d in f.data if isinstance(d, VoiceTurnMetricsData)
    ]
    # The first turn closes when the second arrives, the second at the EndFrame.
    assert [d.turn for d in turn_metrics] == [0, 1]
    assert turn_metrics[0].ttft_ms is not None and turn_metrics[0].voice_to_voice_ms is None
    assert [t.reply_text for t in m.turns] == ["hi", ""]


def _tts_source():
    """A TTS service, as the source of Kokoro's TTFB MetricsFrame (nothing is loaded)."""
    from voxtral_pipeline.config import KokoroConfig
    from voxtral_pipeline.processors.kokoro import KokoroTTSService

    return KokoroTTSService(KokoroConfig(model="dummy:tiny"))


async def test_stage_times_and_overhead_add_up_to_voice_to_voice():
    from pipecat.frames.frames import MetricsFrame
    from pipecat.metrics.metrics import TTFBMetricsData

    from voxtral_pipeline.processors.metrics import STAGE_FIELDS

    m = MetricsStage(MetricsConfig(log_turns=False))
    t0 = 50.0
    await m.observe(_utterance(t0 - 1.0, t0), DOWN, t0 + 0.3)
    await m.observe(LLMFullResponseStartFrame(), DOWN, t0 + 0.305)
    await m.observe(LLMTextFrame(" Hi"), DOWN, t0 + 0.355)
    # Voxtral's own TTFB (from the end of speech) is not the TTS's: ignored.
    voxtral_ttfb = MetricsFrame(data=[TTFBMetricsData(processor="VoxtralLLMService#0", value=0.355)])
    await m.observe(voxtral_ttfb, DOWN, t0 + 0.356, object())
    await m.observe(AggregatedTextFrame(" Hi ", TextType.SENTENCE), DOWN, t0 + 0.365)
    tts = _tts_source()
    kokoro_ttfb = MetricsFrame(data=[TTFBMetricsData(processor=tts.name, value=0.080)])
    await m.observe(kokoro_ttfb, DOWN, t0 + 0.447, tts)
    await m.observe(TTSAudioRawFrame(b"\x00\x00" * 480, 24000, 1), DOWN, t0 + 0.448)
    later = MetricsFrame(data=[TTFBMetricsData(processor=tts.name, value=0.5)])  # a later chunk's
    await m.observe(later, DOWN, t0 + 0.9, tts)
    await m.observe(BotStartedSpeakingFrame(), DOWN, t0 + 0.452)
    await m.finish()
    (turn,) = m.report()["turns"]
    assert turn["vad_stop_ms"] == pytest.approx(200.0)
    assert turn["inference_start_ms"] == pytest.approx(305.0)
    assert turn["vad_wait_ms"] == pytest.approx(200.0)
    assert turn["turn_detect_ms"] == pytest.approx(100.0)
    assert turn["voxtral_ttft_ms"] == pytest.approx(50.0)
    assert turn["first_chunk_wait_ms"] == pytest.approx(10.0)
    assert turn["kokoro_ttfb_ms"] == pytest.approx(80.0)
    # 452 - (200 + 100 + 50 + 10 + 80): the hops turn -> Voxtral, chunk -> Kokoro, Kokoro -> out.
    assert turn["overhead_ms"] == pytest.approx(12.0)
    assert sum(turn[f] for f in STAGE_FIELDS) == pytest.approx(turn["voice_to_voice_ms"])
    assert m.summary()["overhead_ms"]["p50"] == pytest.approx(12.0)


async def test_turn_without_bot_audio_has_no_overhead():
    m = MetricsStage(MetricsConfig(log_turns=False))
    await m.observe(_utterance(1.0, 2.0), DOWN, 2.3)
    await m.observe(LLMFullResponseStartFrame(), DOWN, 2.31)
    await m.finish()
    (turn,) = m.report()["turns"]
    assert turn["voxtral_ttft_ms"] is None and turn["overhead_ms"] is None
    assert m.summary()["overhead_ms"] == {"p50": None, "p90": None, "p95": None}


async def test_unwritable_jsonl_is_a_warning_not_a_lost_session(tmp_path):
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda msg: messages.append(str(msg)), level="WARNING")
    try:
        m = MetricsStage(MetricsConfig(jsonl=tmp_path, log_turns=False))  # a directory, not a file
        await _turn(m, 10.0)
        await _turn(m, 20.0)
        await m.finish()
    finally:
        logger.remove(sink)
    assert len(m.report()["turns"]) == 2
    assert any("cannot append" in line for line in messages)


async def test_turn_and_session_lines():
    from voxtral_pipeline.processors.metrics import summary_line, turn_line

    m = MetricsStage(MetricsConfig(log_turns=False))
    await _turn(m, 10.0)
    await m.finish()
    line = turn_line(m.turns[0])
    assert line.startswith("turn 0: v2v=470ms = vad 200 + turn 100 + voxtral 40 + chunk 10 + kokoro -")
    assert "reply='Hi there'" in line
    assert summary_line(m.summary()).startswith("session: 1 turns, p50/p90/p95 voice-to-voice 470/470/470 ms")


def test_prometheus_histograms_per_mark_and_stage():
    from prometheus_client import CollectorRegistry

    from voxtral_pipeline.telemetry.prometheus import TurnHistograms

    h = TurnHistograms([500, 100, 1000], registry=CollectorRegistry())
    h.observe({"voice_to_voice_ms": 450.0, "overhead_ms": 4.0, "kokoro_ttfb_ms": None}, interrupted=False)
    h.observe({"voice_to_voice_ms": 800.0, "overhead_ms": 6.0}, interrupted=True)
    text = h.render().decode()
    assert 'voxtral_pipeline_latency_ms_bucket{le="500.0",mark="voice_to_voice"} 1.0' in text
    assert 'voxtral_pipeline_latency_ms_bucket{le="1000.0",mark="voice_to_voice"} 2.0' in text
    assert 'voxtral_pipeline_stage_ms_sum{stage="overhead"} 10.0' in text
    assert 'voxtral_pipeline_turns_total{interrupted="true"} 1.0' in text
    assert 'stage="kokoro_ttfb"' not in text  # a missing figure is not observed as zero
    assert "voxtral_pipeline_barge_in_ms_count 0.0" in text
    h.observe({}, interrupted=True, barge_in_ms=180.0)
    text = h.render().decode()
    assert 'voxtral_pipeline_barge_in_ms_bucket{le="500.0"} 1.0' in text


async def test_prometheus_enabled_stage_feeds_the_shared_histograms():
    from voxtral_pipeline.telemetry.prometheus import TurnHistograms

    h = TurnHistograms.shared([100, 1000])

    def count() -> float:
        value = h.registry.get_sample_value("voxtral_pipeline_latency_ms_count", {"mark": "voice_to_voice"})
        return value or 0.0

    before = count()
    m = MetricsStage(MetricsConfig(log_turns=False, prometheus=True))
    await _turn(m, 10.0)
    await m.finish()
    assert count() == before + 1


async def test_answer_synthesized_but_never_heard_counts_as_interrupted():
    m = MetricsStage(MetricsConfig(log_turns=False))
    await m.observe(_utterance(1.0, 2.0), DOWN, 2.3)
    await m.observe(LLMFullResponseStartFrame(), DOWN, 2.31)
    await m.observe(LLMTextFrame(" Hi"), DOWN, 2.35)
    await m.observe(LLMFullResponseEndFrame(), DOWN, 2.36)  # the whole answer is out of Voxtral
    await m.observe(AggregatedTextFrame(" Hi ", TextType.SENTENCE), DOWN, 2.37)
    await m.observe(InterruptionFrame(), DOWN, 2.4)  # the user goes on before any audio plays
    await m.finish()
    (turn,) = m.report()["turns"]
    assert turn["interrupted"] and turn["voice_to_voice_ms"] is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("metrics.histogram_buckets_ms", [100, -5], "positive"),
        ("metrics.otlp_endpoint", "collector:4318", "http(s) URL"),
        ("metrics.prometheus", "maybe", "prometheus"),
    ],
)
def test_bad_metrics_config_is_a_one_line_error(key, value, message):
    from voxtral_pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(overrides={key: value}, environ={})
    assert message in str(e.value) and "\n" not in str(e.value)
