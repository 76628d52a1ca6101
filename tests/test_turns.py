"""Turn stage on real (espeak-ng) speech, streamed in real time through pipecat's harness."""

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
from pipecat.tests.utils import SleepFrame, run_test

from tests.speech import conversation, needs_espeak
from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import TurnConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.turns import TurnStage, UtteranceCollector

RATE = 16000
FRAME = 320  # 20 ms


def _realtime_frames(samples: np.ndarray) -> list:
    pcm = float_to_pcm16(samples)
    frames = []
    for i in range(0, len(pcm), FRAME * 2):
        chunk = pcm[i : i + FRAME * 2].ljust(FRAME * 2, b"\x00")
        frames.append(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))
        frames.append(SleepFrame(sleep=0.02))
    return frames


@needs_espeak
async def test_two_questions_give_two_utterances_with_pre_roll():
    audio = conversation(
        ["What is the capital of France?", "How many legs does a spider have?"], gap_secs=2.5
    )
    audio = np.concatenate([audio, np.zeros(int(1.5 * RATE), np.float32)])
    down, _ = await run_test(TurnStage(TurnConfig()), frames_to_send=_realtime_frames(audio))
    utterances = [f for f in down if isinstance(f, UserUtteranceFrame)]
    starts = [f for f in down if isinstance(f, UserStartedSpeakingFrame)]
    stops = [f for f in down if isinstance(f, UserStoppedSpeakingFrame)]
    assert len(utterances) == 2, [str(f) for f in down if not isinstance(f, InputAudioRawFrame)]
    assert len(starts) == 2 and len(stops) == 2
    for u in utterances:
        # Real end of speech precedes the VAD stop, which precedes the confirmed end of turn.
        assert u.speech_start_time < u.speech_end_time <= u.vad_stop_time <= u.turn_end_time
        assert u.sample_rate == RATE
        # The utterance covers the spoken phrase (each is over a second) plus the pre-roll.
        assert 1.0 < u.duration_secs < 6.0
        pcm = np.frombuffer(u.audio, dtype="<i2")
        # The pre-roll starts in silence: the first syllable is not cut.
        assert np.abs(pcm[:80]).max() < 200


async def test_collector_passes_audio_and_ignores_turn_without_audio():
    collector = UtteranceCollector(pre_roll_secs=0.3)
    frames = [UserStartedSpeakingFrame(), UserStoppedSpeakingFrame()]
    down, _ = await run_test(collector, frames_to_send=frames)
    assert not any(isinstance(f, UserUtteranceFrame) for f in down)


async def test_collector_cuts_turn_audio_from_history():
    collector = UtteranceCollector(pre_roll_secs=0.0)
    tone = float_to_pcm16(np.full(FRAME, 0.3, np.float32))
    frames = [
        InputAudioRawFrame(audio=tone, sample_rate=RATE, num_channels=1),
        UserStartedSpeakingFrame(),
        InputAudioRawFrame(audio=tone, sample_rate=RATE, num_channels=1),
        InputAudioRawFrame(audio=tone, sample_rate=RATE, num_channels=1),
        UserStoppedSpeakingFrame(),
    ]
    down, _ = await run_test(collector, frames_to_send=frames)
    (utt,) = [f for f in down if isinstance(f, UserUtteranceFrame)]
    # The two frames inside the turn are in it, whatever the history held.
    assert len(utt.audio) >= 2 * len(tone)
    assert sum(isinstance(f, InputAudioRawFrame) for f in down) == 3
