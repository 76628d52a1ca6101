"""End of turn: Smart Turn re-evaluated as the silence grows, the thinking pause, the fallback.

The first tests drive :class:`ReevaluatingSmartTurnStopStrategy` frame by frame with a scripted
analyzer (its verdicts are a function of the silence heard), so every rule is checked exactly; the
later ones stream real espeak-ng speech through the turn stage with the real Smart Turn.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    InputAudioRawFrame,
    MetricsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TurnMetricsData
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.asyncio.task_manager import TaskManager

from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import EndOfTurnConfig, TurnConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.turns import ReevaluatingSmartTurnStopStrategy, TurnStage
from voxtral_pipeline.testing.speech import needs_espeak, speak

RATE = 16000
FRAME = 320  # 20 ms
SCHEDULE = [(0.2, 0.9), (0.3, 0.7), (0.4, 0.5), (0.6, 0.3)]


class ScriptedAnalyzer:
    """Stands in for AudioClockSmartTurn: its probability is ``curve(seconds of silence heard)``."""

    def __init__(self, curve):
        self.curve = curve
        self.silence = 0.0
        self.cleared = 0
        self.params = None

    def append_audio(self, buffer: bytes, is_speech: bool):
        pass  # the driver sets ``silence``

    def update_vad_start_secs(self, secs: float):
        pass

    def set_sample_rate(self, rate: int):
        pass

    def clear(self):
        self.cleared += 1

    async def cleanup(self):
        pass

    async def predict(self):
        return TurnMetricsData(
            processor="scripted",
            is_complete=False,
            probability=self.curve(self.silence),
            e2e_processing_time_ms=0,
        )


def _frames(secs: float) -> list[InputAudioRawFrame]:
    return [InputAudioRawFrame(audio=b"\x00" * FRAME * 2, sample_rate=RATE, num_channels=1)] * round(
        secs / 0.02
    )


async def _drive(curve, script, schedule=SCHEDULE, fallback=1.6):
    """Feed ``script`` (frames) to a strategy inside a started turn; return its checks and stops."""
    analyzer = ScriptedAnalyzer(curve)
    strategy = ReevaluatingSmartTurnStopStrategy(
        turn_analyzer=analyzer, schedule=schedule, fallback_secs=fallback
    )
    evaluated, stopped, metrics = [], [], []

    async def on_evaluated(_s, silence, probability, ended):
        evaluated.append((round(silence, 2), round(probability, 2), ended))

    async def on_stopped(_s, _params):
        stopped.append(round(heard[0], 2))

    async def on_push(_s, frame, _direction):
        metrics.append(frame)

    strategy.add_event_handler("on_evaluated", on_evaluated)
    strategy.add_event_handler("on_user_turn_stopped", on_stopped)
    strategy.add_event_handler("on_push_frame", on_push)
    await strategy.setup(
        FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None)
    )
    await strategy.handle_user_turn_started()
    heard = [0.0]  # seconds of silence streamed since the VAD stop (the VAD stop counts its stop_secs)
    for frame in script:
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            heard[0] = frame.stop_secs
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            heard[0] = 0.0
        elif isinstance(frame, InputAudioRawFrame):
            heard[0] += 0.02
        analyzer.silence = heard[0]
        await strategy.process_frame(frame)
        if strategy.verdict_task is not None:  # computed off the frame path: wait for it here
            await strategy.verdict_task
        if stopped:
            break
    return evaluated, stopped, metrics


def _pause(vad_stop_secs: float = 0.2):
    return [VADUserStartedSpeakingFrame(start_secs=0.2), VADUserStoppedSpeakingFrame(stop_secs=vad_stop_secs)]


async def test_smart_turn_is_asked_again_as_the_silence_grows_and_the_bar_falls():
    # A complete sentence whose probability rises with the silence (as Smart Turn's does on a
    # natural voice): 0.3 at the VAD stop, 0.6 at 0.4 s: under the bar at 0.2 and 0.3 s, over it at 0.4.
    evaluated, stopped, metrics = await _drive(
        lambda s: min(0.95, 0.3 + 1.5 * max(0.0, s - 0.2)), [*_pause(), *_frames(2.0)]
    )
    assert [e[0] for e in evaluated] == [0.2, 0.3, 0.4]
    assert [e[2] for e in evaluated] == [False, False, True]
    assert stopped == [0.4]  # ended at 0.4 s of silence, not at the fallback
    # Each verdict goes downstream as pipecat's TurnMetricsData.
    assert len(metrics) == 3 and all(isinstance(m, MetricsFrame) for m in metrics)


async def test_a_confident_verdict_ends_the_turn_at_the_vad_stop():
    evaluated, stopped, _ = await _drive(lambda s: 0.97, [*_pause(), *_frames(1.0)])
    assert evaluated == [(0.2, 0.97, True)] and stopped == [0.2]


async def test_a_thinking_pause_waits_for_the_user_and_the_fallback_ends_silence():
    thinking = lambda s: 0.01  # noqa: E731  ("So I was wondering, um,": ~0.01 at every length)
    # The user resumes after 1.5 s of silence: no end of turn, and no check after the last point.
    resume = VADUserStartedSpeakingFrame(start_secs=0.2)
    evaluated, stopped, _ = await _drive(thinking, [*_pause(), *_frames(1.3), resume, *_frames(1.0)])
    assert stopped == [] and [e[0] for e in evaluated] == [0.2, 0.3, 0.4, 0.6]
    # The user says nothing more: the fallback ends the turn at 1.6 s of silence.
    _, stopped, _ = await _drive(thinking, [*_pause(), *_frames(3.0)])
    assert stopped == [1.6]


async def test_resuming_speech_restarts_the_schedule():
    # Probability 0.6 after 0.3 s of any silence: the first pause is resumed at 0.3 s (before 0.4),
    # the second runs on and ends at 0.4 s; checks start over at the new VAD stop.
    curve = lambda s: 0.6 if s >= 0.3 else 0.2  # noqa: E731
    script = [
        *_pause(),
        *_frames(0.1),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *_frames(0.5),
        *_pause(),
        *_frames(1.0),
    ]
    evaluated, stopped, _ = await _drive(curve, script)
    assert [e[0] for e in evaluated] == [0.2, 0.3, 0.2, 0.3, 0.4]
    assert stopped == [0.4]


async def test_a_verdict_that_comes_back_after_the_user_resumed_is_dropped():
    analyzer = ScriptedAnalyzer(lambda s: 0.99)
    strategy = ReevaluatingSmartTurnStopStrategy(turn_analyzer=analyzer, schedule=SCHEDULE, fallback_secs=2.0)
    await strategy.setup(
        FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None)
    )
    evaluated, stopped = [], []

    async def on_evaluated(_s, silence, probability, ended):
        evaluated.append(ended)

    async def on_stopped(_s, _params):
        stopped.append(True)

    strategy.add_event_handler("on_evaluated", on_evaluated)
    strategy.add_event_handler("on_user_turn_stopped", on_stopped)
    await strategy.handle_user_turn_started()
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    task = strategy.verdict_task
    assert task is not None  # launched at the VAD stop, not awaited on the frame path
    await strategy.process_frame(VADUserStartedSpeakingFrame(start_secs=0.2))  # the user goes on
    await task
    assert evaluated == [False] and stopped == []


async def test_points_passed_during_a_slow_verdict_collapse_into_the_latest():
    # A VAD stop that only comes after 0.45 s of silence: the 0.2-0.4 s points are past, one
    # check runs with the 0.4 s bar.
    evaluated, stopped, _ = await _drive(lambda s: 0.55, [*_pause(0.45), *_frames(0.5)])
    assert evaluated == [(0.45, 0.55, True)] and stopped == [0.45]


async def test_no_check_outside_a_turn():
    strategy = ReevaluatingSmartTurnStopStrategy(
        turn_analyzer=ScriptedAnalyzer(lambda s: 0.99), schedule=SCHEDULE, fallback_secs=1.0
    )
    stopped = []

    async def on_stopped(_s, _params):
        stopped.append(True)

    strategy.add_event_handler("on_user_turn_stopped", on_stopped)
    for frame in [*_pause(), *_frames(2.0)]:
        await strategy.process_frame(frame)
    assert stopped == []


def test_schedule_is_validated():
    with pytest.raises(ValueError, match="schedule point"):
        EndOfTurnConfig(schedule=[(0.2, 1.5)])
    with pytest.raises(ValueError):
        EndOfTurnConfig(schedule=[])
    with pytest.raises(ValueError, match="at least one"):
        ReevaluatingSmartTurnStopStrategy(
            turn_analyzer=ScriptedAnalyzer(lambda s: 0), schedule=[], fallback_secs=1
        )


# --- Real speech through the turn stage --------------------------------------------------------------


def _realtime_frames(samples: np.ndarray) -> list:
    pcm = float_to_pcm16(samples)
    frames = []
    for i in range(0, len(pcm), FRAME * 2):
        chunk = pcm[i : i + FRAME * 2].ljust(FRAME * 2, b"\x00")
        frames.append(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))
        frames.append(SleepFrame(sleep=0.02))
    return frames


def _spoken(*parts: str | float) -> np.ndarray:
    out = [np.zeros(int(0.5 * RATE), np.float32)]
    for part in parts:
        out.append(np.zeros(int(part * RATE), np.float32) if isinstance(part, float) else speak(part))
    return np.concatenate(out)


async def _through_stage(audio: np.ndarray, config: TurnConfig):
    stage = TurnStage(config)
    verdicts: list[tuple[float, float, bool]] = []

    async def on_evaluated(_s, silence, probability, ended):
        verdicts.append((silence, probability, ended))

    stage.stop_strategy.add_event_handler("on_evaluated", on_evaluated)
    down, _ = await run_test(stage, frames_to_send=_realtime_frames(audio))
    return down, verdicts


@needs_espeak
async def test_a_thinking_pause_of_1_2_s_stays_one_turn_with_the_real_smart_turn():
    audio = _spoken("So the thing is, um", 1.2, "I need a new phone.", 2.5)
    down, verdicts = await _through_stage(audio, TurnConfig(speculative=False))
    (utterance,) = [f for f in down if isinstance(f, UserUtteranceFrame)]
    assert utterance.duration_secs > 3.0  # both halves
    assert len([f for f in down if isinstance(f, UserStoppedSpeakingFrame)]) == 1
    # Re-evaluated inside the pause (more than once), never over the bar there.
    in_pause = [v for v in verdicts if not v[2]]
    assert len(in_pause) >= 2


@needs_espeak
async def test_a_complete_question_is_ended_by_smart_turn_not_the_fallback():
    audio = _spoken("What time does the museum open tomorrow?", 2.5)
    down, verdicts = await _through_stage(audio, TurnConfig(speculative=False))
    assert len([f for f in down if isinstance(f, UserUtteranceFrame)]) == 1
    assert len([f for f in down if isinstance(f, UserStartedSpeakingFrame)]) == 1
    assert verdicts and verdicts[-1][2] is True  # the last verdict ended the turn
    assert verdicts[-1][0] < TurnConfig().max_silence_secs
