"""Our voice-to-voice figure agrees with pipecat's own UserBotLatencyObserver on the same run."""

import pytest
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver

from tests.speech import conversation, needs_espeak, write_wav
from voxtral_pipeline.config import load_config
from voxtral_pipeline.pipeline import build_pipeline


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

    @observer.event_handler("on_latency_measured")
    async def _on_latency(_observer, latency_secs: float):
        measured.append(latency_secs * 1000)

    voice = build_pipeline(config, observers=[observer])
    report = await voice.run()
    ours = [t["voice_to_voice_ms"] for t in report["turns"]]
    assert len(ours) == 2 and all(v is not None for v in ours)
    assert len(measured) == 2
    # Same start (last VAD stop minus stop_secs) and same end (BotStartedSpeakingFrame); the only
    # difference is where each reads the clock for the end mark.
    for a, b in zip(ours, measured, strict=True):
        assert a == pytest.approx(b, abs=25.0)
