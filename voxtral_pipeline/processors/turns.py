"""Turn stage: Silero VAD + Smart Turn v3 (both shipped in pipecat) hand over whole utterances.

The stage is a small pipeline of pipecat's own ``VADProcessor`` and ``UserTurnProcessor`` (Smart
Turn without waiting for a transcript, since Voxtral needs none), followed by
:class:`UtteranceCollector`, which cuts the user's audio for the turn, with a pre-roll so the first
syllable is not lost, and emits it as one :class:`~voxtral_pipeline.frames.UserUtteranceFrame`.
"""

from __future__ import annotations

import time
from collections import deque

from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from voxtral_pipeline.config import TurnConfig
from voxtral_pipeline.frames import UserUtteranceFrame

# Audio kept before a VAD start, beyond the pre-roll: the VAD reports a start only after
# `start_secs` of speech and some onset latency, so the real start lies this far back at most.
_HISTORY_SLACK_SECS = 1.0


class UtteranceCollector(FrameProcessor):
    """Collect the user's audio for each turn and emit it as one ``UserUtteranceFrame``.

    Audio frames pass through untouched. A short history of recent audio is kept so that the
    utterance can start ``pre_roll_secs`` before the real start of speech (VAD start minus its
    ``start_secs``), which lies before the moment the turn is declared.
    """

    def __init__(self, *, pre_roll_secs: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        self._pre_roll_secs = pre_roll_secs
        self._history: deque[tuple[float, InputAudioRawFrame]] = deque()
        self._history_secs = 0.0
        self._max_history_secs = pre_roll_secs + _HISTORY_SLACK_SECS + 1.0
        self._in_turn = False
        self._turn_audio: list[bytes] = []
        self._sample_rate = 16000
        self._num_channels = 1
        self._speech_start_time: float | None = None
        self._last_vad_stop: VADUserStoppedSpeakingFrame | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            self._on_audio(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._speech_start_time is None:
                self._speech_start_time = frame.timestamp - frame.start_secs
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._last_vad_stop = frame
        elif isinstance(frame, UserStartedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._start_turn()
        elif isinstance(frame, UserStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            await self._end_turn()
            return

        await self.push_frame(frame, direction)

    def _on_audio(self, frame: InputAudioRawFrame):
        self._sample_rate = frame.sample_rate
        self._num_channels = frame.num_channels
        if self._in_turn:
            self._turn_audio.append(frame.audio)
            return
        now = time.time()
        self._history.append((now, frame))
        self._history_secs += _frame_secs(frame)
        while self._history and self._history_secs > self._max_history_secs:
            _, old = self._history.popleft()
            self._history_secs -= _frame_secs(old)

    def _start_turn(self):
        self._in_turn = True
        start = self._speech_start_time if self._speech_start_time is not None else time.time()
        cut = start - self._pre_roll_secs
        # A frame stamped at arrival time t holds the audio of [t - duration, t].
        self._turn_audio = [f.audio for (t, f) in self._history if t > cut]
        self._history.clear()
        self._history_secs = 0.0

    async def _end_turn(self):
        if not self._in_turn:
            return
        now = time.time()
        audio = b"".join(self._turn_audio)
        vad_stop = self._last_vad_stop
        speech_end = vad_stop.timestamp - vad_stop.stop_secs if vad_stop else now
        speech_start = self._speech_start_time if self._speech_start_time is not None else speech_end
        self._in_turn = False
        self._turn_audio = []
        self._speech_start_time = None
        self._last_vad_stop = None
        if not audio:
            logger.debug(f"{self}: turn ended with no audio, nothing to answer")
            return
        utterance = UserUtteranceFrame(
            audio=audio,
            sample_rate=self._sample_rate,
            num_channels=self._num_channels,
            speech_start_time=speech_start,
            speech_end_time=speech_end,
            vad_stop_time=vad_stop.timestamp if vad_stop else now,
            turn_end_time=now,
        )
        logger.debug(f"{self}: {utterance}")
        await self.push_frame(utterance)


def _frame_secs(frame: InputAudioRawFrame) -> float:
    return len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)


class TurnStage(Pipeline):
    """VAD, turn detection and utterance collection as one pipeline stage."""

    def __init__(self, config: TurnConfig | None = None, **kwargs):
        config = config or TurnConfig()
        vad = SileroVADAnalyzer(
            params=VADParams(
                confidence=config.vad.confidence,
                start_secs=config.vad.start_secs,
                stop_secs=config.vad.stop_secs,
                min_volume=config.vad.min_volume,
            )
        )
        if config.smart_turn:
            stop = TurnAnalyzerUserTurnStopStrategy(
                turn_analyzer=LocalSmartTurnAnalyzerV3(
                    params=SmartTurnParams(stop_secs=config.max_silence_secs)
                ),
                wait_for_transcript=False,
            )
        else:
            stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0, wait_for_transcript=False)
        self.vad_processor = VADProcessor(vad_analyzer=vad)
        self.user_turn_processor = UserTurnProcessor(
            user_turn_strategies=UserTurnStrategies(start=[VADUserTurnStartStrategy()], stop=[stop]),
            user_turn_stop_timeout=config.max_silence_secs + 1.0,
        )
        self.collector = UtteranceCollector(pre_roll_secs=config.pre_roll_ms / 1000)
        super().__init__([self.vad_processor, self.user_turn_processor, self.collector], **kwargs)
