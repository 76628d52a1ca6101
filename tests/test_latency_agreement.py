"""Our waterfall agrees with pipecat's own UserBotLatencyObserver on the same run."""

import pytest
from pipecat.observers.user_bot_latency_observer import LatencyBreakdown, UserBotLatencyObserver

from voxtral_pipeline.config import load_config
from voxtral_pipeline.pipeline import build_pipeline
from voxtral_pipeline.processors.metrics import LATENCY_FIELDS, STAGE_FIELDS
from voxtral_pipeline.testing.speech import conversation, needs_espeak, write_wav


@needs_espeak
async def test_voice_to_voice_matches_user_bot_latency_observer(tmp_path):
    wav = write_wav(
        tmp_path / "two.wav",
        conversation(["What is the capital of France?", "How many legs does a spider have?"], gap_secs=5.0),
    )
    config = load_config(
        overrides={
            "transport.file.input": str(wav),
            "voxtral.model": "dummy:tiny",
            "voxtral.max_new_tokens": 12,
            "voxtral.seed": 0,
            "kokoro.model": "dummy:tiny",
            "metrics.log_turns": False,
        },
        environ={},
    )
    observer = UserBotLatencyObserver()
    measured: list[float] = []
    breakdowns: list[LatencyBreakdown] = []

    @observer.event_handler("on_latency_measured")
    async def _on_latency(_observer, latency_secs: float):
        measured.append(latency_secs * 1000)

    @observer.event_handler("on_latency_breakdown")
    async def _on_breakdown(_observer, breakdown: LatencyBreakdown):
        breakdowns.append(breakdown)

    voice = build_pipeline(config, observers=[observer])
    report = await voice.run()
    turns = report["turns"]
    ours = [t["voice_to_voice_ms"] for t in turns]
    assert len(ours) == 2 and all(v is not None for v in ours)
    assert len(measured) == 2 and len(breakdowns) == 2
    # Same start (last VAD stop minus stop_secs) and same end (BotStartedSpeakingFrame); the only
    # difference is where each reads the clock for the end mark.
    for a, b in zip(ours, measured, strict=True):
        assert a == pytest.approx(b, abs=25.0)

    for turn, breakdown in zip(turns, breakdowns, strict=True):
        # The turn confirmation: pipecat times it to the UserStoppedSpeakingFrame the turn stage sends.
        assert turn["end_of_turn_ms"] == pytest.approx(breakdown.user_turn_secs * 1000, abs=25.0)
        # Kokoro's TTFB is the very metric pipecat collects for the TTS service.
        kokoro = [t for t in breakdown.ttfb if t.processor.startswith("KokoroTTSService")]
        assert kokoro and turn["kokoro_ttfb_ms"] == pytest.approx(kokoro[0].duration_secs * 1000, abs=0.1)
        # Every mark is there, in causal order, and the stage times add up to voice-to-voice.
        marks = [turn[k] for k in LATENCY_FIELDS]
        assert None not in marks and marks == sorted(marks)
        assert sum(turn[k] for k in STAGE_FIELDS) == pytest.approx(turn["voice_to_voice_ms"], abs=0.5)
