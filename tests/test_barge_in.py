"""Barge-in: the bot falls silent at once, the report says so, and the context keeps what was heard."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TTSTextFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
)
from voxtral_pipeline.config import VoxtralConfig, load_config
from voxtral_pipeline.frames import BotAudioStoppedFrame, BotSpokenTextFrame
from voxtral_pipeline.processors.playback import PlaybackTracker
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.testing.speech import needs_espeak, speak, write_wav

RATE = 16000


def _audio() -> OutputAudioRawFrame:
    return OutputAudioRawFrame(audio=b"\x01\x00" * 480, sample_rate=24000, num_channels=1)


async def test_tracker_reports_the_text_played_before_an_interruption():
    frames = [
        BotStartedSpeakingFrame(),
        LLMFullResponseStartFrame(),
        _audio(),
        TTSTextFrame("Paris is the capital.", text_type="sentence"),
        _audio(),
        SleepFrame(sleep=0.05),  # the interruption (a system frame) must not overtake the text
        InterruptionFrame(),
        SleepFrame(sleep=0.2),  # the report of the bot's silence waits out the frame in flight
    ]
    _, up = await run_test(PlaybackTracker(), frames_to_send=frames)
    (spoken,) = [f for f in up if isinstance(f, BotSpokenTextFrame)]
    assert spoken.interrupted and spoken.text == "Paris is the capital."
    (stopped,) = [f for f in up if isinstance(f, BotAudioStoppedFrame)]
    assert stopped.last_audio_time is not None and stopped.last_audio_time <= stopped.interruption_time


async def test_tracker_reports_an_answer_played_to_its_end():
    frames = [
        LLMFullResponseStartFrame(),
        TTSTextFrame("One.", text_type="sentence"),
        TTSTextFrame("Two.", text_type="sentence"),
        LLMFullResponseEndFrame(),
    ]
    _, up = await run_test(PlaybackTracker(), frames_to_send=frames)
    (spoken,) = [f for f in up if isinstance(f, BotSpokenTextFrame)]
    assert not spoken.interrupted and spoken.text == "One. Two."


async def test_voxtral_context_keeps_what_was_heard(tiny_bundle):
    config = VoxtralConfig(model="dummy:tiny", temperature=0.0, max_new_tokens=12, warmup=False)
    service = VoxtralLLMService(config, bundle=tiny_bundle, min_new_tokens=12)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        sent = service.history[-1].text
        heard = sent[:5]
        await h.send(BotSpokenTextFrame(text=heard, interrupted=True))
        await h.wait_down(count(BotSpokenTextFrame, 1))
        assert service.history[-1].text == heard != sent
        # A second answer, played to its end: a late interruption report no longer touches it.
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
        second = service.history[-1].text
        await h.send(BotSpokenTextFrame(text=second, interrupted=False))
        await h.send(BotSpokenTextFrame(text="", interrupted=True))
        await h.wait_down(count(BotSpokenTextFrame, 3))
    assert service.history[-1].text == second and service.history[1].text == heard


@needs_espeak
async def test_barge_in_silences_the_bot_within_a_frame_and_is_reported(tmp_path, tiny_bundle):
    from voxtral_pipeline.pipeline import build_pipeline
    from voxtral_pipeline.transports.file import FileTransport, PlaybackCue

    lead, gap = np.zeros(int(0.5 * RATE), np.float32), np.zeros(int(0.8 * RATE), np.float32)
    question, barge = (
        speak("What is the capital of France?"),
        speak("Tell me about the history of Rome instead."),
    )
    wav = write_wav(tmp_path / "barge.wav", np.concatenate([lead, question, gap, barge]))
    config = load_config(
        overrides={
            "transport.file.input": str(wav),
            "voxtral.model": "dummy:tiny",
            "voxtral.max_new_tokens": 60,
            "voxtral.seed": 0,
            "kokoro.model": "dummy:tiny",
            "metrics.log_turns": False,
        },
        environ={},
    )
    # The barge-in is held back until the bot has spoken for 0.6 s, however slow this machine is.
    barge_at = (len(lead) + len(question) + len(gap)) / RATE - 0.2
    transport = FileTransport(
        config.transport.file, cues=[PlaybackCue(at_secs=barge_at, bot_speaking_secs=0.6)]
    )
    voxtral = VoxtralLLMService(config.voxtral, bundle=tiny_bundle, min_new_tokens=60)
    report = await build_pipeline(config, transport, voxtral=voxtral).run()

    assert len(report["turns"]) == 2, report["turns"]
    first, second = report["turns"]  # the question, and the barge-in as a turn of its own
    assert first["interrupted"] and not second["interrupted"]
    assert first["barge_in_ms"] is not None and first["barge_in_ms"] > 0
    assert second["barge_in_ms"] is None

    # The output received the interruption while the bot spoke: at most the one frame being written
    # is heard after it, then silence until the answer to the barge-in.
    origin = transport.stream_start
    interruption = next(t for t in transport.interruptions if t - origin > barge_at)
    spans = transport.bot_audio_spans()
    assert any(start < interruption for start, _ in spans)
    late = [s for s, e in spans if interruption <= s < interruption + 0.5]
    assert len(late) <= 1
    rec = transport.recording()
    rate = 24000
    quiet = rec[int((interruption - origin + 0.05) * rate) : int((interruption - origin + 0.5) * rate), 1]
    assert quiet.size and np.abs(quiet).max() == 0.0

    # The context holds what the listener heard of the first answer (whole sentences, played to
    # their end), not everything that was generated.
    answer = voxtral.history[1]
    sent = voxtral.turn_stats[0].text
    assert answer.role == "assistant" and len(answer.text) < len(sent)
    assert "".join(sent.split()).startswith("".join(answer.text.split()))


def test_file_transport_stops_waiting_for_a_reply_to_an_ignored_turn(tmp_path):
    from pipecat.frames.frames import UserStoppedSpeakingFrame

    from voxtral_pipeline.config import FileTransportConfig
    from voxtral_pipeline.frames import UserTurnIgnoredFrame
    from voxtral_pipeline.transports.file import FileTransport

    wav = write_wav(tmp_path / "s.wav", np.zeros(RATE, np.float32))
    transport = FileTransport(FileTransportConfig(input=wav, reply_timeout_secs=120.0, idle_secs=1.0))
    source = transport.input()
    source._track(UserStoppedSpeakingFrame())
    assert not source._done(source._awaiting_reply_since + 1.0)  # waits for the bot's answer...
    source._track(UserTurnIgnoredFrame(reason="a cough"))
    assert source._done(source._last_bot_activity + 1.0)  # ...unless there is none to wait for
