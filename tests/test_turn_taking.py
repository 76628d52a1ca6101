"""Turn taking end to end: questions close together, the bot's own voice leaking back, barge-in.

Real speech (espeak-ng) streamed in real time, through the file transport and the whole pipeline
(dummy models) or through the turn stage alone; assertions are on turns and frames, never on time.
"""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    UserStartedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from tests.voxtral_fixtures import tiny_bundle_fixture  # noqa: F401  (the tiny_bundle fixture)
from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import TurnConfig, load_config
from voxtral_pipeline.frames import UserTurnIgnoredFrame, UserUtteranceFrame
from voxtral_pipeline.processors.turns import TurnStage
from voxtral_pipeline.testing.eot_corpus import speech_bounds
from voxtral_pipeline.testing.speech import needs_espeak, speak, write_wav

RATE = 16000
FRAME = 320


def _level(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Trimmed to its speech, at a set level (the corpus's)."""
    a, b = speech_bounds(x)
    x = x[a:b]
    return (x * (peak / np.abs(x).max())).astype(np.float32)


def _silence(secs: float) -> np.ndarray:
    return np.zeros(int(secs * RATE), np.float32)


@needs_espeak
async def test_questions_two_seconds_apart_are_one_turn_each(tmp_path, tiny_bundle):
    from voxtral_pipeline.pipeline import build_pipeline
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService
    from voxtral_pipeline.transports.file import FileTransport

    questions = ["What is the capital of France?", "Why is the sky blue?", "Who wrote Pride and Prejudice?"]
    parts = [_silence(0.5)]
    for q in questions:
        parts += [_level(speak(q)), _silence(2.0)]
    wav = write_wav(tmp_path / "close.wav", np.concatenate(parts))
    config = load_config(
        overrides={
            "transport.file.input": str(wav),
            "voxtral.model": "dummy:tiny",
            "voxtral.max_new_tokens": 3,
            "voxtral.seed": 0,
            "kokoro.model": "dummy:tiny",
            "metrics.log_turns": False,
        },
        environ={},
    )
    transport = FileTransport(config.transport.file)
    voxtral = VoxtralLLMService(config.voxtral, bundle=tiny_bundle)
    report = await build_pipeline(config, transport, voxtral=voxtral).run()
    # pipecat's default (Smart Turn once, then 3 s) merged the second and third question: the 3 s
    # fallback had not fired before the next question began. Each is its own turn now.
    assert len(report["turns"]) == len(questions), report["turns"]
    ends = [t["user_end_s"] for t in report["turns"]]
    assert ends == sorted(ends)


def _stream(samples: np.ndarray, *, bot_from: float | None = None, bot_to: float | None = None) -> list:
    """Real-time input frames; the bot is audible (Bot*SpeakingFrame) from ``bot_from`` to ``bot_to`` s."""
    pcm = float_to_pcm16(samples)
    frames: list = []
    for k, i in enumerate(range(0, len(pcm), FRAME * 2)):
        t = k * FRAME / RATE
        if bot_from is not None and abs(t - bot_from) < 1e-6:
            frames.append(BotStartedSpeakingFrame())
        if bot_to is not None and abs(t - bot_to) < 1e-6:
            frames.append(BotStoppedSpeakingFrame())
        chunk = pcm[i : i + FRAME * 2].ljust(FRAME * 2, b"\x00")
        frames += [InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1), SleepFrame(sleep=0.02)]
    return frames


def _on_frame(t: float) -> float:
    return round(t / 0.02) * 0.02


def _first_turn_then(after: np.ndarray) -> tuple[np.ndarray, float]:
    """A user question (the VAD learns the user's level from it), then ``after`` from the returned time."""
    question = _level(speak("What is the capital of France?"))
    head = np.concatenate([_silence(0.5), question, _silence(2.5)])
    return np.concatenate([head, after, _silence(2.5)]), len(head) / RATE


def _bot_voice() -> np.ndarray:
    """The bot's answer as the user's microphone hears it without echo cancellation: -10 dB."""
    answer = _level(
        speak("Paris is the capital of France. It is known for the Eiffel Tower and its museums.", wpm=175)
    )
    return answer * 10 ** (-10 / 20)


@needs_espeak
async def test_the_bots_own_voice_at_minus_10_db_does_not_interrupt_it():
    echo = _bot_voice()
    audio, bot_from = _first_turn_then(echo)
    frames = _stream(
        audio,
        bot_from=round(bot_from / 0.02) * 0.02,
        bot_to=round((bot_from + len(echo) / RATE) / 0.02) * 0.02,
    )
    stage = TurnStage(TurnConfig(speculative=False))
    down, _ = await run_test(stage, frames_to_send=frames)
    # One turn (the question); the echo started none and interrupted nothing.
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 1
    assert not [f for f in down if isinstance(f, InterruptionFrame)][1:]
    assert len([f for f in down if isinstance(f, UserUtteranceFrame)]) == 1
    assert stage.vad.user_level_db is not None and stage.vad.echo_gate_db > -40


@needs_espeak
async def test_without_the_echo_gate_the_bots_voice_would_interrupt_it():
    # The control for the test above: the same input, the gate off (60 dB of margin).
    echo = _bot_voice()
    audio, bot_from = _first_turn_then(echo)
    frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + len(echo) / RATE))
    config = TurnConfig(speculative=False, interruptions={"echo_margin_db": 60})
    down, _ = await run_test(TurnStage(config), frames_to_send=frames)
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) >= 2


@needs_espeak
async def test_a_question_over_the_bots_voice_interrupts_and_is_answered():
    barge = _level(speak("Wait, what time is it?"))
    # The bot talks for 0.8 s, the user talks over it; the bot is cut off 0.3 s later (its echo ends).
    echo = _bot_voice()[: int(1.1 * RATE)]
    over = np.concatenate([echo, np.zeros(len(barge) - int(0.3 * RATE), np.float32)])
    over[int(0.8 * RATE) :] += barge
    audio, bot_from = _first_turn_then(over)
    frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + 1.1))
    down, _ = await run_test(TurnStage(TurnConfig(speculative=False)), frames_to_send=frames)
    starts = [f for f in down if isinstance(f, UserStartedSpeakingFrame)]
    assert len(starts) == 2
    utterances = [f for f in down if isinstance(f, UserUtteranceFrame)]
    assert len(utterances) == 2  # the question over the bot is a turn, never dropped
    assert not [f for f in down if isinstance(f, UserTurnIgnoredFrame)]


@needs_espeak
async def test_noise_while_the_bot_speaks_does_not_interrupt_it():
    rng = np.random.default_rng(0)
    noise = _level(rng.standard_normal(int(0.6 * RATE)).astype(np.float32), peak=0.4)  # a loud hiss
    clicks = np.zeros(int(0.6 * RATE), np.float32)
    clicks[:: int(0.05 * RATE)] = 0.5  # a burst of clicks
    after = np.concatenate([noise, _silence(0.5), clicks])
    audio, bot_from = _first_turn_then(after)
    frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + len(after) / RATE))
    down, _ = await run_test(TurnStage(TurnConfig(speculative=False)), frames_to_send=frames)
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 1


@needs_espeak
async def test_min_speech_keeps_a_backchannel_from_interrupting_but_not_a_question():
    # The quick onset cannot tell "mm-hm" from the first 100 ms of a question (Silero scores both
    # ~1.0); interruptions.min_speech_ms can, at the cost of a later barge-in (docs/turns.md).
    config = TurnConfig(speculative=False, interruptions={"min_speech_ms": 1000})
    mm = _level(speak("Mm-hm."))
    assert len(mm) / RATE < 0.9  # shorter than the minimum (espeak says it in ~0.76 s, Kokoro ~0.45 s)
    audio, bot_from = _first_turn_then(mm)
    frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + 2.0))
    down, _ = await run_test(TurnStage(config), frames_to_send=frames)
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 1
    assert len([f for f in down if isinstance(f, UserTurnIgnoredFrame)]) == 0  # nothing was a turn

    question = _level(speak("Tell me about the history of Rome instead."))
    audio, bot_from = _first_turn_then(question)
    frames = _stream(audio, bot_from=_on_frame(bot_from))
    down, _ = await run_test(TurnStage(config), frames_to_send=frames)
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 2


@needs_espeak
async def test_a_question_that_cuts_the_bot_off_is_one_turn_however_long_the_bot_takes_to_stop():
    # CI split "Who wrote | Pride and Prejudice?" in two turns: the bot began its answer as the
    # question began, and while it stayed audible every 32 ms window of the user's speech was held
    # to the echo gate on its own, so the quiet ones between words made a VAD stop mid-question.
    # The gate decides whether speech may start a turn; once it has (the bot is being cut off) the
    # usual loudness decides its end. (Before the fix: 3 starts with the bot audible for 3 s.)
    question = _level(speak("Who wrote Pride and Prejudice?"))
    echo = _bot_voice()
    for with_echo, audible in ((False, 0.6), (False, 3.0), (True, 3.0)):
        heard = question.copy()
        if with_echo:
            n = min(len(echo), len(heard))
            heard[:n] += echo[:n]
        audio, bot_from = _first_turn_then(heard)
        frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + audible))
        down, _ = await run_test(TurnStage(TurnConfig(speculative=False)), frames_to_send=frames)
        starts = [f for f in down if isinstance(f, UserStartedSpeakingFrame)]
        utterances = [f for f in down if isinstance(f, UserUtteranceFrame)]
        case = f"echo={with_echo}, bot audible {audible:.1f} s into the question"
        assert (len(starts), len(utterances)) == (2, 2), case
        assert not [f for f in down if isinstance(f, UserTurnIgnoredFrame)], case


@needs_espeak
async def test_a_backchannel_over_the_bots_echo_stays_gated():
    # The control for the test above: speech that has not started a turn (a "mm-hm" under
    # interruptions.min_speech_ms) stays held to the echo gate, so the bot's own voice after it
    # cannot stretch it into an interruption.
    config = TurnConfig(speculative=False, interruptions={"min_speech_ms": 1000})
    mm = _level(speak("Mm-hm."))
    heard = _bot_voice()
    at = int(0.3 * RATE)
    heard[at : at + len(mm)] += mm
    audio, bot_from = _first_turn_then(heard)
    frames = _stream(audio, bot_from=_on_frame(bot_from), bot_to=_on_frame(bot_from + len(heard) / RATE))
    down, _ = await run_test(TurnStage(config), frames_to_send=frames)
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 1
