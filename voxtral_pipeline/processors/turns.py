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

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.utils import exp_smoothing
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    MetricsFrame,
    SpeechControlParamsFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TurnMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
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


def _window_db(audio: bytes) -> float:
    x = np.frombuffer(audio, dtype=np.int16).astype(np.float32) / 32768.0
    return float(10 * np.log10(np.mean(x * x) + 1e-12)) if x.size else -120.0


#: How much lower than the echo gate a window may be and still hold speech that has begun while the
#: bot speaks (see TurnVADAnalyzer).
_HOLD_EXTRA_DB = 6.0


class TurnVADAnalyzer(SileroVADAnalyzer):
    """pipecat's Silero VAD, with a quicker, echo-gated start while the bot is speaking.

    Stock Silero reports a start after ``start_secs`` (0.2 s) of speech whose loudness, smoothed
    over pipecat's 400 ms BS.1770 window, clears ``min_volume``: with onset lag that stopped the bot
    350 ms (p50) after the user began (issue 15). While the bot speaks (:attr:`bot_speaking`, set by
    the start strategy) a start needs only ``barge_in_secs`` of speech, and each 32 ms window is
    gated by its own level instead (once speech is under way, by a bar ``_HOLD_EXTRA_DB`` lower;
    once it has started a turn, the usual smoothed loudness decides its stop): at most
    ``echo_margin_db`` below the user's own voice, learned
    from the loud windows of their speech while the bot was silent. The bot's voice leaking back
    into the microphone is quieter than the user speaking into it (at -10 dB it stays under the
    gate), so it does not interrupt; the user talking over it does. Before the user has spoken the
    gate is open (the bot only speaks after a user turn, so this lasts no longer than the greeting).
    """

    def __init__(self, *, params: VADParams, barge_in_secs: float, echo_margin_db: float, **kwargs):
        super().__init__(params=params, **kwargs)
        self._normal_params = params
        self._barge_in_secs = barge_in_secs
        self._echo_margin_db = echo_margin_db
        self._bot_speaking = False
        self._user_has_floor = False
        self._levels: deque[float] = deque(maxlen=300)  # the user's loud windows (~10 s)
        self._smoothed = 0.0
        self._recent: deque[float] = deque(maxlen=2)  # Silero's last scores (~64 ms)

    def voice_confidence(self, buffer) -> float:
        confidence = super().voice_confidence(buffer)
        self._recent.append(float(np.asarray(confidence).reshape(-1)[0]))
        return confidence

    @property
    def hears_voice(self) -> bool:
        """Silero scored voice (at the VAD's own confidence) in the last ~64 ms, whether or not a
        start has been declared yet.

        After a long pause the loudness smoothing delays the VAD's start by up to ~0.4 s; the stop
        strategy must not take that stretch of resumed speech for silence. (At the VAD stop itself
        this is false: the stop needs ``stop_secs`` of windows under the confidence.)
        """
        return bool(self._recent) and max(self._recent) >= self._normal_params.confidence

    @property
    def bot_speaking(self) -> bool:
        return self._bot_speaking

    @bot_speaking.setter
    def bot_speaking(self, value: bool) -> None:
        if value == self._bot_speaking:
            return
        self._bot_speaking = value
        self._user_has_floor = False
        # Swap the start length without set_params(), which would reset a start in progress.
        params = self._normal_params
        if value:
            params = params.model_copy(update={"start_secs": min(params.start_secs, self._barge_in_secs)})
        self._params = params
        self._vad_start_frames = max(
            1, round(params.start_secs / (self.num_frames_required() / self.sample_rate))
        )

    def give_user_the_floor(self) -> None:
        """The user's speech has started a turn over the bot (it is being cut off): the echo gate,
        which only decides whether speech may start a turn, is lifted until the bot next speaks."""
        self._user_has_floor = True

    def set_params(self, params: VADParams):
        self._normal_params = params
        super().set_params(params)

    @property
    def user_level_db(self) -> float | None:
        """The user's voice level (70th percentile of their speech windows, dBFS), once heard."""
        return float(np.percentile(self._levels, 70)) if len(self._levels) >= 10 else None

    @property
    def echo_gate_db(self) -> float:
        level = self.user_level_db
        return -120.0 if level is None else level - self._echo_margin_db

    def _get_smoothed_volume(self, audio: bytes) -> float:
        self._volume_tracker.update(audio, self.sample_rate)
        self._smoothed = exp_smoothing(self._volume_tracker.volume, self._smoothed, self._smoothing_factor)
        level = _window_db(audio)
        if self._bot_speaking and self._user_has_floor:
            # The gate decides whether speech may start a turn. Held to it after the turn had cut
            # the bot off, the quiet windows between words made VAD stops mid-question while the
            # bot was still audible: CI split "Who wrote | Pride and Prejudice?" in two.
            return self._smoothed
        if self._bot_speaking:
            gate = self.echo_gate_db
            if self._vad_state in (VADState.SPEAKING, VADState.STOPPING):
                # Speech already under way (not yet a turn: min_speech_ms) is held by a lower bar,
                # so the quiet windows between a question's words do not end it; the bot's echo
                # alone (-10 dB) stays under it and a backchannel still ends with itself.
                gate -= _HOLD_EXTRA_DB
            return 1.0 if level >= gate else 0.0
        if self._vad_state == VADState.SPEAKING and level > -60.0:
            self._levels.append(level)
        return self._smoothed


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

    def __init__(
        self,
        *,
        interruptions: bool = True,
        min_speech_secs: float = 0.0,
        vad: TurnVADAnalyzer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._vad = vad  # told when the bot speaks, for its quick, echo-gated start
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
            if self._vad is not None and self._interruptions:
                self._vad.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._vad is not None:
                self._vad.bot_speaking = False
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
        if self._bot_speaking and self._vad is not None:
            self._vad.give_user_the_floor()
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


class AudioClockSmartTurn(LocalSmartTurnAnalyzerV3):
    """pipecat's Smart Turn v3 analyzer on a clock of streamed audio, asked for its probability.

    Two changes to ``BaseSmartTurn``, which stamps every frame with ``time.monotonic()``: the
    stamps count samples instead (frames that arrive in a burst after a network hiccup, or a
    corpus streamed faster than real time, keep their true spacing, so the pre-speech cut is
    right), and :meth:`predict` scores the turn's audio so far without clearing it, so the same
    turn can be scored again as its trailing silence grows. The silence fallback of
    ``append_audio`` is left to the stop strategy (``stop_secs`` is set out of reach). With
    ``context_pause_secs``, speech after a pause at least that long is scored from its own start
    (with the usual pre-speech), not from the start of the turn.
    """

    def __init__(self, *, context_pause_secs: float | None = None, **kwargs):
        kwargs.setdefault("params", SmartTurnParams(stop_secs=3600.0))
        super().__init__(**kwargs)
        self._clock = 0.0
        self._context_pause_ms = None if context_pause_secs is None else context_pause_secs * 1000

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        audio = np.frombuffer(buffer, dtype=np.int16)
        self._clock += len(audio) / (self.sample_rate or 16000)
        self._audio_buffer.append((self._clock, audio))
        if is_speech:
            if (
                self._speech_triggered
                and self._context_pause_ms is not None
                and self._silence_ms >= self._context_pause_ms
            ):
                # The user resumed after a pause: judge what they say from here on its own. Smart
                # Turn hears "fragment, long silence, rest" as unfinished far more often than the
                # rest alone: on the corpus's paused utterances, the end of turn scored >= 0.5 at
                # 0.4 s of silence in 41 % of them with the whole turn, 70 % with the rest alone.
                self._speech_start_time = 0
            self._silence_ms = 0
            self._speech_triggered = True
            if self._speech_start_time == 0:
                self._speech_start_time = self._clock
        elif self._speech_triggered:
            self._silence_ms += len(audio) / (self.sample_rate or 16000) * 1000
        else:
            keep = self._params.pre_speech_ms / 1000 + self._vad_start_secs + 0.5
            while self._audio_buffer and self._audio_buffer[0][0] < self._clock - keep:
                self._audio_buffer.pop(0)
        return EndOfTurnState.INCOMPLETE

    async def predict(self) -> TurnMetricsData | None:
        """Smart Turn's verdict on the audio so far (None before any speech); the buffer is kept."""
        if not self._speech_triggered:
            return None
        loop = asyncio.get_running_loop()
        _, result = await loop.run_in_executor(
            self._model_executor, self._process_speech_segment, list(self._audio_buffer)
        )
        return result if isinstance(result, TurnMetricsData) else None


class ReevaluatingSmartTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends the turn when Smart Turn's probability clears a bar that falls as the silence grows.

    Pipecat's ``TurnAnalyzerUserTurnStopStrategy`` asks Smart Turn once, at the VAD stop, and on
    "incomplete" waits out a 3 s fallback. But Smart Turn v3.2's probability on a finished sentence
    rises with the trailing silence it hears (0.13-0.47 at 0.2 s, 0.5-0.97 at 0.4 s on the real
    Kokoro voice) while a thinking pause stays near 0.01 at every length; so half the turns of a
    natural voice went to the fallback (issue 15: end of turn p50 1.8 s, p95 3.2 s). Here Smart Turn
    is asked again at each point of ``schedule`` (seconds of silence since the real end of speech,
    as the VAD estimates it, and the probability needed there), and a turn still open after
    ``fallback_secs`` of silence ends anyway. Silence is counted in streamed audio. The model runs
    in the analyzer's thread off the frame path (pipecat's awaits it inline: with verdicts every
    100 ms and inference at 100-300 ms on a loaded CPU, the audio backed up behind it); a verdict
    that comes back after the user spoke again is dropped.

    Each verdict goes out as pipecat's ``TurnMetricsData`` ``MetricsFrame``. Event handler
    ``on_evaluated(strategy, silence_secs, probability, ended)`` for benchmarks and tests.
    """

    def __init__(
        self,
        *,
        turn_analyzer: AudioClockSmartTurn,
        schedule: list[tuple[float, float]],
        fallback_secs: float,
        voice_guard: Callable[[], bool] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._voice_guard = voice_guard  # true while the user may be resuming (TurnVADAnalyzer.hears_voice)
        if not schedule:
            raise ValueError("the end-of-turn schedule needs at least one (silence, probability) point")
        self._analyzer = turn_analyzer
        self._schedule = sorted((float(s), float(p)) for s, p in schedule)
        self._fallback_secs = fallback_secs
        self._active = False
        self._speaking = False
        self._silence: float | None = None  # seconds since the VAD's end of speech, None while speaking
        self._next = 0  # index in the schedule of the next check
        self._epoch = 0  # bumped whenever a verdict in flight goes stale (speech, turn boundary)
        self._verdict_task: asyncio.Task | None = None
        self._register_event_handler("on_evaluated", sync=True)

    @property
    def turn_analyzer(self) -> AudioClockSmartTurn:
        return self._analyzer

    @property
    def verdict_task(self) -> asyncio.Task | None:
        """The Smart Turn verdict being computed, if any (benchmarks wait on it)."""
        return self._verdict_task

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        self._analyzer.set_sample_rate(setup.audio_in_sample_rate)

    async def cleanup(self):
        await super().cleanup()
        if self._verdict_task is not None:
            await self.task_manager.cancel_task(self._verdict_task)
            self._verdict_task = None
        await self._analyzer.cleanup()

    async def handle_user_turn_started(self):
        self._active, self._silence, self._next = True, None, 0
        self._epoch += 1

    async def handle_user_turn_stopped(self):
        self._active, self._silence = False, None
        self._epoch += 1
        self._analyzer.clear()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, StartFrame):
            await self.broadcast_frame(SpeechControlParamsFrame, turn_params=self._analyzer.params)
        elif isinstance(frame, InputAudioRawFrame):
            self._analyzer.append_audio(frame.audio, self._speaking)
            if self._silence is not None:
                self._silence += _frame_secs(frame)
                await self._check()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._analyzer.update_vad_start_secs(frame.start_secs)
            self._speaking, self._silence = True, None
            self._epoch += 1
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            self._silence, self._next = frame.stop_secs, 0
            await self._check()
        return ProcessFrameResult.CONTINUE

    async def _check(self):
        if not self._active or self._silence is None:
            return
        silence = self._silence
        if silence >= self._fallback_secs:
            if self._resuming():
                return  # voice, not yet a VAD start: wait for the VAD to say which
            self._epoch += 1  # a verdict still in flight is moot
            await self._end(silence, None)
            return
        if self._verdict_task is not None:
            return  # points passed meanwhile are taken up when it is done: the latest counts
        due = None
        while self._next < len(self._schedule) and self._schedule[self._next][0] <= silence + 1e-6:
            due = self._schedule[self._next][1]
            self._next += 1
        if due is not None:
            self._verdict_task = self.task_manager.create_task(
                self._verdict(due, silence, self._epoch), f"{self}::verdict"
            )

    async def _verdict(self, bar: float, silence: float, epoch: int):
        """Smart Turn on the audio so far, off the frame path (audio keeps flowing meanwhile)."""
        try:
            result = await self._analyzer.predict()
        finally:
            self._verdict_task = None
        if result is None:
            return
        await self.push_frame(MetricsFrame(data=[result]))
        current = epoch == self._epoch and self._active and self._silence is not None
        ended = current and result.probability >= bar and not self._resuming()
        await self._call_event_handler("on_evaluated", silence, result.probability, ended)
        if ended:
            await self._end(silence, result.probability)

    def _resuming(self) -> bool:
        return self._voice_guard is not None and self._voice_guard()

    async def _end(self, silence: float, probability: float | None):
        why = "silence fallback" if probability is None else f"Smart Turn p={probability:.2f}"
        logger.debug(f"{self}: end of turn after {silence * 1000:.0f} ms of silence ({why})")
        self._silence = None
        await self.trigger_user_turn_stopped()


class UtteranceCollector(FrameProcessor):
    """Collect the user's audio for each turn and emit it as one ``UserUtteranceFrame``.

    Audio frames pass through untouched. A short history of recent audio is kept so that the
    utterance can start ``pre_roll_secs`` before the real start of speech (VAD start minus its
    ``start_secs``), which lies before the moment the turn is declared.

    A turn with less than ``min_utterance_secs`` of speech (the VAD's speech segments, pauses
    excluded) is ignored: a ``UserTurnIgnoredFrame`` goes both ways instead of an utterance; but
    not one that interrupted the bot (the barge-in rules already judged it speech).
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
        self._bot_speaking = False
        self._interrupting = False  # the turn started while the bot was audible (it cut the bot off)

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
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
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
        self._interrupting = self._bot_speaking
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
        elif voiced < self._min_utterance_secs and self._interrupting:
            # The bot has already been cut off for it: answer rather than leave the user in silence
            # (issue 15: a question spoken over the bot was dropped as "52 ms of speech").
            logger.debug(f"{self}: {voiced * 1000:.0f} ms of speech, kept: it interrupted the bot")
            await self.push_frame(utterance)
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


@dataclass
class TurnStrategies:
    """The strategies of one turn stage, built from its config (the stage and eot_bench share them)."""

    strategies: UserTurnStrategies
    start: BargeInUserTurnStartStrategy
    stop: BaseUserTurnStopStrategy
    turn_analyzer: LocalSmartTurnAnalyzerV3 | None
    stop_timeout_secs: float


def build_vad(config: TurnConfig) -> TurnVADAnalyzer:
    """The turn stage's Silero VAD (see :class:`TurnVADAnalyzer`)."""
    return TurnVADAnalyzer(
        params=VADParams(
            confidence=config.vad.confidence,
            start_secs=config.vad.start_secs,
            stop_secs=config.vad.stop_secs,
            min_volume=config.vad.min_volume,
        ),
        barge_in_secs=config.interruptions.onset_ms / 1000,
        echo_margin_db=config.interruptions.echo_margin_db,
    )


def build_turn_strategies(
    config: TurnConfig,
    turn_analyzer: LocalSmartTurnAnalyzerV3 | None = None,
    vad: TurnVADAnalyzer | None = None,
    voice_guard: Callable[[], bool] | None = None,
) -> TurnStrategies:
    """Start and stop strategies for ``config``; ``turn_analyzer`` reuses a loaded Smart Turn
    (an :class:`AudioClockSmartTurn`, for the reevaluating strategy)."""
    interruptions = config.interruptions
    start = BargeInUserTurnStartStrategy(
        interruptions=interruptions.enabled, min_speech_secs=interruptions.min_speech_ms / 1000, vad=vad
    )
    stop: BaseUserTurnStopStrategy
    eot = config.end_of_turn
    if not config.smart_turn:
        turn_analyzer = None
        stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0, wait_for_transcript=False)
    elif eot.strategy == "reevaluate":
        if not isinstance(turn_analyzer, AudioClockSmartTurn):
            turn_analyzer = AudioClockSmartTurn(context_pause_secs=eot.context_pause_secs)
        if voice_guard is None and vad is not None:
            voice_guard = lambda: vad.hears_voice  # noqa: E731
        stop = ReevaluatingSmartTurnStopStrategy(
            turn_analyzer=turn_analyzer,
            schedule=eot.schedule,
            fallback_secs=config.max_silence_secs,
            voice_guard=voice_guard,
        )
    else:
        # pipecat's own: Smart Turn once at the VAD stop, its silence fallback after "incomplete".
        if turn_analyzer is None or isinstance(turn_analyzer, AudioClockSmartTurn):
            turn_analyzer = LocalSmartTurnAnalyzerV3(
                params=SmartTurnParams(stop_secs=config.max_silence_secs)
            )
        stop = TurnAnalyzerUserTurnStopStrategy(turn_analyzer=turn_analyzer, wait_for_transcript=False)
    return TurnStrategies(
        strategies=UserTurnStrategies(
            start=[start], stop=[MaxUtteranceUserTurnStopStrategy(max_secs=config.max_utterance_secs), stop]
        ),
        start=start,
        stop=stop,
        turn_analyzer=turn_analyzer,
        stop_timeout_secs=config.max_silence_secs + 1.0,
    )


class TurnStage(Pipeline):
    """VAD, turn detection and utterance collection as one pipeline stage."""

    def __init__(self, config: TurnConfig | None = None, **kwargs):
        config = config or TurnConfig()
        self.vad = vad = build_vad(config)
        built = build_turn_strategies(config, vad=vad)
        self.turn_analyzer = built.turn_analyzer
        self.start_strategy = built.start
        self.stop_strategy = built.stop
        self.start_strategy.add_event_handler("on_speech_ignored", self._on_speech_ignored)
        self.vad_processor = VADProcessor(vad_analyzer=vad)
        self.user_turn_processor = UserTurnProcessor(
            user_turn_strategies=built.strategies, user_turn_stop_timeout=built.stop_timeout_secs
        )
        self.collector = UtteranceCollector(
            pre_roll_secs=config.pre_roll_ms / 1000,
            min_utterance_secs=config.min_utterance_ms / 1000,
            speculative=config.speculative and config.smart_turn,
            history_secs=config.interruptions.min_speech_ms / 1000,
            max_turn_secs=2 * config.max_utterance_secs,
        )
        super().__init__([self.vad_processor, self.user_turn_processor, self.collector], **kwargs)

    async def _on_speech_ignored(self, _strategy, _reason: str):
        # Speech that is not a turn must not reach Smart Turn's view of the next one.
        if self.turn_analyzer is not None:
            self.turn_analyzer.clear()
