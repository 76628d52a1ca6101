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
