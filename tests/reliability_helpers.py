"""Shared pieces of the reliability tests: a protobuf WebSocket client and resource snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import websockets
from pipecat.frames.frames import InputAudioRawFrame, InputTransportMessageFrame, OutputAudioRawFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from voxtral_pipeline.testing.resources import Snapshot, rss_mb  # noqa: F401  (re-exported)

#: Fail-safe only: a broken test stops here instead of hanging; nothing asserts a duration.
WAIT_S = 90.0
STEP_MS = 20


class WSClient:
    """One client of the bot's WebSocket: sends 16-bit PCM, collects the events and audio it gets."""

    def __init__(self, url: str):
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.audio_bytes = 0
        self.closed = asyncio.Event()
        self._ser = ProtobufFrameSerializer()
        self._changed = asyncio.Event()
        self._ws: Any = None
        self._receiver: asyncio.Task | None = None

    async def __aenter__(self) -> WSClient:
        self._ws = await websockets.connect(self.url, max_size=None)
        self._receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)

    async def _receive(self) -> None:
        try:
            async for raw in self._ws:
                frame = await self._ser.deserialize(raw)
                if isinstance(frame, InputAudioRawFrame):
                    self.audio_bytes += len(frame.audio)
                elif isinstance(frame, InputTransportMessageFrame):
                    self.events.append(frame.message)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()

    async def send_raw(self, data: bytes | str) -> None:
        await self._ws.send(data)

    async def send_audio(self, pcm: bytes, rate: int = 16000, channels: int = 1) -> None:
        """One audio message as it is given (no splitting)."""
        await self._ws.send(await self._ser.serialize(OutputAudioRawFrame(pcm, rate, channels)))

    async def stream(self, pcm: bytes, rate: int = 16000, realtime: bool = True, channels: int = 1) -> None:
        """Send ``pcm`` in 20 ms messages, paced in real time or as fast as the socket takes them."""
        step = rate * STEP_MS // 1000 * 2 * channels
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, i in enumerate(range(0, len(pcm), step)):
            chunk = pcm[i : i + step]
            await self.send_audio(chunk + b"\x00" * (step - len(chunk)), rate, channels)
            if realtime:
                await asyncio.sleep(max(0.0, start + (n + 1) * STEP_MS / 1000 - loop.time()))
            elif n % 25 == 0:
                await asyncio.sleep(0)

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.events]

    def count(self, kind: str) -> int:
        return self.types().count(kind)

    async def wait_for(self, predicate: Callable[[WSClient], bool], what: str) -> None:
        async def loop() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), WAIT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; events: {self.types()[-30:]}") from None


async def poll(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait until ``predicate()`` holds (something another task or thread does)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def session_threads(names: list[str]) -> list[str]:
    """Threads a session owns (its TTS worker); the engine's thread and the server's are shared."""
    return [n for n in names if n.startswith("kokoro-tts")]
