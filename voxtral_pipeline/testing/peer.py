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
    """A microphone playing 16 kHz 16-bit mono PCM in real time, then silence."""

    kind = "audio"

    def __init__(self, pcm: bytes):
        super().__init__()
        self._pcm = np.frombuffer(pcm, dtype="<i2")
        self._n = 0
        self._start: float | None = None

    async def recv(self):
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._n * 0.02 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._pcm[self._n * STEP : (self._n + 1) * STEP]
        chunk = np.pad(chunk, (0, STEP - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n * STEP
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame
