"""An aiortc peer's microphone for the WebRTC tests: recorded speech paced in real time."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
from aiortc import MediaStreamTrack

RATE = 16000
STEP = RATE // 50  # 20 ms


class SpeechTrack(MediaStreamTrack):
    """A microphone playing 16 kHz 16-bit mono PCM in real time, then silence.

    With ``speak_when``, silence until that event is set, then the speech: a user who talks once
    the bot is ready (RTVI ``bot-ready``), not into a pipeline still loading its models.
    """

    kind = "audio"

    def __init__(self, pcm: bytes, *, speak_when: asyncio.Event | None = None):
        super().__init__()
        self._pcm = np.frombuffer(pcm, dtype="<i2")
        self._speak_when = speak_when
        self._n = 0  # frames sent
        self._spoken = 0  # frames of the speech sent
        self._start: float | None = None

    async def recv(self):
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._n * 0.02 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._speak_when is None or self._speak_when.is_set():
            chunk = self._pcm[self._spoken * STEP : (self._spoken + 1) * STEP]
            self._spoken += 1
        else:
            chunk = self._pcm[:0]
        chunk = np.pad(chunk, (0, STEP - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n * STEP
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame
