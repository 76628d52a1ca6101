"""Playback tracker: what the listener actually heard, reported upstream from after the output.

Pipecat's output transport plays bot audio from a queue and lets every other frame on that queue
(``TTSTextFrame``, the LLM response start/end) out only once the audio before it has been played;
at an ``InterruptionFrame`` it drops the queue. A stage placed right after ``transport.output()``
therefore sees the bot's text in playback order, cut where the listener stopped hearing it. This
one sends that upstream, as frames (the only coupling between stages):

* :class:`~voxtral_pipeline.frames.BotSpokenTextFrame` at the end of every answer played to its
  end (``interrupted=False``) and at every interruption (``interrupted=True``, with the text played
  so far), so the Voxtral stage keeps in its context only what the bot really said;
* :class:`~voxtral_pipeline.frames.BotAudioStoppedFrame` once the bot has fallen silent after an
  interruption, with the time its last audio sample was heard (the barge-in time in the metrics).
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voxtral_pipeline.frames import BotAudioStoppedFrame, BotSpokenTextFrame

# The output transport finishes the audio frame it is writing when an interruption arrives (it
# drains only the queue): wait this many frames' time for that last one before reporting.
_TAIL_FRAMES = 2


class PlaybackTracker(FrameProcessor):
    """Follows playback after the output transport; reports spoken text and the bot's silence upstream.

    Runs in pipecat's direct mode (no queue of its own), so a frame is accounted for the moment
    the output transport lets it out, and an interruption cannot drop text that was already played.
    """

    def __init__(self, **kwargs):
        super().__init__(enable_direct_mode=True, **kwargs)
        self._parts: list[str] = []
        self._open = False  # an answer's start was played, its end not yet
        self._bot_speaking = False
        self._last_audio_time: float | None = None
        self._frame_secs = 0.02
        self._stop_task: asyncio.Task | None = None

    @property
    def spoken_text(self) -> str:
        """The current answer's text as played so far."""
        return "".join(self._parts).strip()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            await self._track(frame)
        await self.push_frame(frame, direction)

    async def _track(self, frame: Frame):
        if isinstance(frame, OutputAudioRawFrame):
            # Written (played, for a real-time sink) before the transport lets it out.
            self._last_audio_time = time.time()
            if frame.sample_rate and frame.num_channels:
                self._frame_secs = len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        elif isinstance(frame, TTSTextFrame):
            spaced = frame.includes_inter_frame_spaces or not self._parts
            self._parts.append(frame.text if spaced else f" {frame.text}")
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._open, self._parts = True, []
        elif isinstance(frame, LLMFullResponseEndFrame):
            if self._open:
                await self._report(interrupted=False)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, InterruptionFrame):
            await self._on_interruption()

    async def _report(self, *, interrupted: bool):
        text = self.spoken_text if self._open else ""
        self._open, self._parts = False, []
        if interrupted:
            logger.debug(f"{self}: interrupted; the listener heard {text!r}")
        await self.push_frame(BotSpokenTextFrame(text=text, interrupted=interrupted), FrameDirection.UPSTREAM)

    async def _on_interruption(self):
        # Always reported, even with nothing played: an answer still being generated (not yet
        # audible) was interrupted too, and only the Voxtral stage knows whether one was.
        await self._report(interrupted=True)
        if self._bot_speaking and (self._stop_task is None or self._stop_task.done()):
            self._stop_task = self.create_task(self._report_silence(time.time()), "playback-silence")

    async def _report_silence(self, interruption_time: float):
        await asyncio.sleep(_TAIL_FRAMES * self._frame_secs)
        last = self._last_audio_time
        if last is not None and last - interruption_time > self._frame_secs + 0.01:
            logger.warning(
                f"{self}: bot audio went on {(last - interruption_time) * 1000:.0f} ms after the interruption"
            )
        await self.push_frame(
            BotAudioStoppedFrame(interruption_time=interruption_time, last_audio_time=last),
            FrameDirection.UPSTREAM,
        )

    async def cleanup(self):
        await super().cleanup()
        if self._stop_task is not None and not self._stop_task.done():
            await self.cancel_task(self._stop_task)
