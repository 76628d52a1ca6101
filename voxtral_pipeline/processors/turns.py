"""Turn stage: Silero VAD + Smart Turn v3 (both shipped in pipecat) hand over whole utterances.

The stage is a small pipeline of pipecat's own ``VADProcessor`` and ``UserTurnProcessor`` (Smart
Turn without waiting for a transcript, since Voxtral needs none), followed by
:class:`UtteranceCollector`, which cuts the user's audio for the turn, with a pre-roll so the first
syllable is not lost, and emits it as one :class:`~voxtral_pipeline.frames.UserUtteranceFrame`.

Two strategies of ours sit in pipecat's ``UserTurnProcessor`` beside its own:

* :class:`BargeInUserTurnStartStrategy` starts a turn on the VAD start, like pipecat's
  ``VADUserTurnStartStrategy``, but while the bot is audible it applies the barge-in options
  (interruptions off, or a minimum of speech before the bot is cut off).
* :class:`MaxUtteranceUserTurnStopStrategy` ends a turn that has run too long at the user's next
  pause, whatever Smart Turn thinks.

See docs/turns.md for the timeline and the knobs.
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
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
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
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from voxtral_pipeline.config import TurnConfig
from voxtral_pipeline.frames import (
    SpeculationCancelFrame,
    SpeculativeUtteranceFrame,
    UserTurnIgnoredFrame,
    UserUtteranceFrame,
)

# Audio kept before a VAD start, beyond the pre-roll: the VAD reports a start only after
# `start_secs` of speech and some onset latency, so the real start lies this far back at most.
_HISTORY_SLACK_SECS = 1.0


def _frame_secs(frame: InputAudioRawFrame) -> float:
    return len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)


class BargeInUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """A VAD start starts the turn, with pipecat's interruption; while the bot speaks, barge-in rules apply.

    Replaces pipecat's ``VADUserTurnStartStrategy`` (which starts every turn at the VAD start and
    interrupts at once) because barge-in needs two options it lacks: turning interruptions off
    (speech that starts while the bot is audible is then ignored, half duplex) and a minimum of
    speech before the bot is cut off, counted in input audio (not wall-clock time), so that a
    cough does not silence the bot. Pipecat's ``MinWordsUserTurnStartStrategy`` does the latter
    with a transcript, which this pipeline never has.

    Event handlers: ``on_speech_ignored(strategy, reason)`` when speech never became a turn.
    """

    def __init__(self, *, interruptions: bool = True, min_speech_secs: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self._interruptions = interruptions
        self._min_speech_secs = min_speech_secs
        self._bot_speaking = False
        self._pending = False  # speech heard while the bot speaks, not yet long enough
        self._heard_secs = 0.0
        self._ignoring = False  # speech (interruptions off) that is not a turn
        self._register_event_handler("on_speech_ignored", sync=True)

    @property
    def bot_speaking(self) -> bool:
        return self._bot_speaking

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._pending:
                # The bot fell silent while the user was speaking: nothing left to interrupt.
                await self._start()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._heard_secs = frame.start_secs
            if not self._bot_speaking:
                await self._start()
            elif not self._interruptions:
                self._ignoring = True
                logger.debug(f"{self}: user speech while the bot speaks, interruptions off: ignored")
            elif self._heard_secs >= self._min_speech_secs:
                await self._start()
            else:
                self._pending = True
            return ProcessFrameResult.STOP
        elif isinstance(frame, InputAudioRawFrame) and self._pending:
            self._heard_secs += _frame_secs(frame)
            if self._heard_secs >= self._min_speech_secs:
                await self._start()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            if self._pending:
                self._pending = False
                await self._ignored(
                    f"{self._heard_secs * 1000:.0f} ms of speech while the bot spoke, "
                    f"under interruptions.min_speech_ms={self._min_speech_secs * 1000:.0f}"
                )
            elif self._ignoring:
                self._ignoring = False
                await self._ignored("speech while the bot spoke, interruptions off")
        return ProcessFrameResult.CONTINUE

    async def _start(self):
        self._pending = False
        self._ignoring = False
        await self.trigger_user_turn_started()

    async def _ignored(self, reason: str):
        logger.debug(f"{self}: not a turn: {reason}")
        await self._call_event_handler("on_speech_ignored", reason)


class MaxUtteranceUserTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends a turn longer than ``max_secs`` at the user's next pause, whatever Smart Turn says.

    Time is counted in input audio from the turn start. Pipecat's turn controller never ends a
    turn while the VAD hears speech, so a user who never pauses keeps the turn until they do.
    """

    def __init__(self, *, max_secs: float, **kwargs):
        super().__init__(**kwargs)
        self._max_secs = max_secs
        self._active = False
        self._fired = False
        self._elapsed = 0.0
        self._speaking = False

    async def handle_user_turn_started(self):
        self._active, self._fired, self._elapsed = True, False, 0.0

    async def handle_user_turn_stopped(self):
        self._active = False

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speaking = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            await self._maybe_stop()
        elif isinstance(frame, InputAudioRawFrame) and self._active:
            self._elapsed += _frame_secs(frame)
            await self._maybe_stop()
        return ProcessFrameResult.CONTINUE

    async def _maybe_stop(self):
        if self._active and not self._fired and not self._speaking and self._elapsed >= self._max_secs:
            self._fired = True
            logger.debug(f"{self}: turn reached max_utterance_secs={self._max_secs:.0f}, ending it")
            await self.trigger_user_turn_stopped()


class UtteranceCollector(FrameProcessor):
    """Collect the user's audio for each turn and emit it as one ``UserUtteranceFrame``.

    Audio frames pass through untouched. A short history of recent audio is kept so that the
    utterance can start ``pre_roll_secs`` before the real start of speech (VAD start minus its
    ``start_secs``), which lies before the moment the turn is declared.

    A turn with less than ``min_utterance_secs`` of speech (the VAD's speech segments, pauses
    excluded) is ignored: a ``UserTurnIgnoredFrame`` goes both ways instead of an utterance.
    With ``speculative``, every VAD stop inside a turn also sends the audio so far as a
    ``SpeculativeUtteranceFrame``, a VAD start after it a ``SpeculationCancelFrame``, and the
    utterance at the end of the turn says whether it confirms the last speculation.
    """

    def __init__(
        self,
        *,
        pre_roll_secs: float = 0.3,
        min_utterance_secs: float = 0.0,
        speculative: bool = False,
        history_secs: float = 0.0,
        max_turn_secs: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._pre_roll_secs = pre_roll_secs
        # A user who never pauses keeps the turn (pipecat never ends a turn over speech): keep only
        # the newest audio so such a turn cannot grow memory without bound.
        self._max_turn_secs = max_turn_secs
        self._turn_secs = 0.0
        self._turn_trimmed = False
        self._min_utterance_secs = min_utterance_secs
        self._speculative = speculative
        self._history: deque[tuple[float, InputAudioRawFrame]] = deque()
        self._history_secs = 0.0
        self._max_history_secs = pre_roll_secs + _HISTORY_SLACK_SECS + 1.0 + history_secs
        self._in_turn = False
        self._turn_audio: deque[bytes] = deque()
        self._sample_rate = 16000
        self._num_channels = 1
        self._speech_start_time: float | None = None
        self._segment_start: float | None = None  # onset of the speech segment in progress
        self._voiced_secs = 0.0
        self._speculated = False
        self._last_vad_stop: VADUserStoppedSpeakingFrame | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        downstream = direction == FrameDirection.DOWNSTREAM

        if isinstance(frame, InputAudioRawFrame):
            self._on_audio(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame) and downstream:
            await self._on_vad_start(frame)
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and downstream:
            await self.push_frame(frame, direction)
            await self._on_vad_stop(frame)
            return
        elif isinstance(frame, UserStartedSpeakingFrame) and downstream:
            self._start_turn()
        elif isinstance(frame, UserStoppedSpeakingFrame) and downstream:
            await self.push_frame(frame, direction)
            await self._end_turn()
            return

        await self.push_frame(frame, direction)

    def _on_audio(self, frame: InputAudioRawFrame):
        self._sample_rate = frame.sample_rate
        self._num_channels = frame.num_channels
        if self._in_turn:
            self._append_turn_audio(frame.audio)
            return
        now = time.time()
        self._history.append((now, frame))
        self._history_secs += _frame_secs(frame)
        while self._history and self._history_secs > self._max_history_secs:
            _, old = self._history.popleft()
            self._history_secs -= _frame_secs(old)

    def _append_turn_audio(self, audio: bytes) -> None:
        bytes_per_sec = 2 * self._num_channels * self._sample_rate
        self._turn_audio.append(audio)
        self._turn_secs += len(audio) / bytes_per_sec
        if self._max_turn_secs is None:
            return
        while len(self._turn_audio) > 1 and self._turn_secs > self._max_turn_secs:
            self._turn_secs -= len(self._turn_audio.popleft()) / bytes_per_sec
            if not self._turn_trimmed:
                self._turn_trimmed = True
                logger.warning(
                    f"{self}: the user has spoken for over {self._max_turn_secs:.0f} s without a pause; "
                    "keeping only the newest audio of this turn"
                )

    async def _on_vad_start(self, frame: VADUserStartedSpeakingFrame):
        onset = frame.timestamp - frame.start_secs
        self._segment_start = onset
        if not self._in_turn and self._speech_start_time is None:
            self._speech_start_time = onset
        if self._speculated:
            # The user goes on speaking: the answer started at the last pause answers half a turn.
            self._speculated = False
            await self.push_frame(SpeculationCancelFrame())

    async def _on_vad_stop(self, frame: VADUserStoppedSpeakingFrame):
        self._last_vad_stop = frame
        if self._segment_start is not None:
            self._voiced_secs += max(0.0, frame.timestamp - frame.stop_secs - self._segment_start)
            self._segment_start = None
        if not self._in_turn:
            # Speech that never became a turn (ignored while the bot spoke): forget its marks.
            self._speech_start_time = None
            self._voiced_secs = 0.0
            return
        if self._speculative and self._voiced_secs >= self._min_utterance_secs and self._turn_audio:
            self._speculated = True
            await self.push_frame(SpeculativeUtteranceFrame(utterance=self._utterance(frame, time.time())))

    def _start_turn(self):
        self._in_turn = True
        self._voiced_secs = 0.0
        self._speculated = False
        start = self._speech_start_time if self._speech_start_time is not None else time.time()
        cut = start - self._pre_roll_secs
        # A frame stamped at arrival time t holds the audio of [t - duration, t].
        self._turn_audio = deque()
        self._turn_secs = 0.0
        self._turn_trimmed = False
        for t, f in self._history:
            if t > cut:
                self._append_turn_audio(f.audio)
        self._history.clear()
        self._history_secs = 0.0

    def _utterance(self, vad_stop: VADUserStoppedSpeakingFrame | None, now: float) -> UserUtteranceFrame:
        speech_end = vad_stop.timestamp - vad_stop.stop_secs if vad_stop else now
        speech_start = self._speech_start_time if self._speech_start_time is not None else speech_end
        return UserUtteranceFrame(
            audio=b"".join(self._turn_audio),
            sample_rate=self._sample_rate,
            num_channels=self._num_channels,
            speech_start_time=speech_start,
            speech_end_time=speech_end,
            vad_stop_time=vad_stop.timestamp if vad_stop else now,
            turn_end_time=now,
        )

    async def _end_turn(self):
        if not self._in_turn:
            return
        utterance = self._utterance(self._last_vad_stop, time.time())
        utterance.confirms_speculation = self._speculated
        voiced = self._voiced_secs
        if self._segment_start is not None:  # a turn ended without a VAD stop (the watchdog)
            voiced += max(0.0, utterance.speech_end_time - self._segment_start)
        self._in_turn = False
        self._turn_audio = deque()
        self._turn_secs = 0.0
        self._speech_start_time = None
        self._segment_start = None
        self._voiced_secs = 0.0
        self._speculated = False
        self._last_vad_stop = None
        if not utterance.audio:
            await self._ignore("turn ended with no audio")
        elif voiced < self._min_utterance_secs:
            await self._ignore(
                f"{voiced * 1000:.0f} ms of speech, under turns.min_utterance_ms="
                f"{self._min_utterance_secs * 1000:.0f}"
            )
        else:
            logger.debug(f"{self}: {utterance}")
            await self.push_frame(utterance)

    async def _ignore(self, reason: str):
        logger.debug(f"{self}: turn ignored: {reason}")
        await self.broadcast_frame(UserTurnIgnoredFrame, reason=reason)


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
        self.turn_analyzer: LocalSmartTurnAnalyzerV3 | None = None
        stop: BaseUserTurnStopStrategy
        if config.smart_turn:
            self.turn_analyzer = LocalSmartTurnAnalyzerV3(
                params=SmartTurnParams(stop_secs=config.max_silence_secs)
            )
            stop = TurnAnalyzerUserTurnStopStrategy(
                turn_analyzer=self.turn_analyzer, wait_for_transcript=False
            )
        else:
            stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0, wait_for_transcript=False)
        interruptions = config.interruptions
        self.start_strategy = BargeInUserTurnStartStrategy(
            interruptions=interruptions.enabled, min_speech_secs=interruptions.min_speech_ms / 1000
        )
        self.start_strategy.add_event_handler("on_speech_ignored", self._on_speech_ignored)
        self.vad_processor = VADProcessor(vad_analyzer=vad)
        self.user_turn_processor = UserTurnProcessor(
            user_turn_strategies=UserTurnStrategies(
                start=[self.start_strategy],
                stop=[MaxUtteranceUserTurnStopStrategy(max_secs=config.max_utterance_secs), stop],
            ),
            user_turn_stop_timeout=config.max_silence_secs + 1.0,
        )
        self.collector = UtteranceCollector(
            pre_roll_secs=config.pre_roll_ms / 1000,
            min_utterance_secs=config.min_utterance_ms / 1000,
            speculative=config.speculative and config.smart_turn,
            history_secs=interruptions.min_speech_ms / 1000,
            max_turn_secs=2 * config.max_utterance_secs,
        )
        super().__init__([self.vad_processor, self.user_turn_processor, self.collector], **kwargs)

    async def _on_speech_ignored(self, _strategy, _reason: str):
        # Speech that is not a turn must not reach Smart Turn's view of the next one.
        if self.turn_analyzer is not None:
            self.turn_analyzer.clear()
