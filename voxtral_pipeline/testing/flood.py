"""A protobuf WebSocket client for the bot, a flooder, and a process's resident memory.

Used by ``benchmarks/flood_bench.py``: one client converses in real time while another (in its own
process: ``python -m voxtral_pipeline.testing.flood URL``) sends audio as fast as the socket takes
it. Traffic goes only where it is told (the bench uses 127.0.0.1) and is bounded in audio and time.
The flooder can connect from another loopback address (``--local-addr 127.0.0.2``): the bot's
flood cooldown is per address, and on one machine that is how a second host is modelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
STEP_BYTES = RATE // 50 * 2  # 20 ms of 16-bit mono


def speech_pcm(text: str, lead_secs: float = 0.3) -> bytes:
    """``text`` spoken by espeak-ng as 16 kHz 16-bit mono PCM, after ``lead_secs`` of silence."""
    import soundfile as sf

    from voxtral_pipeline.audio import float_to_pcm16, resample

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("needs espeak-ng for its speech (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "s.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True)
        data, rate = sf.read(str(wav), dtype="float32")
    samples = np.concatenate([np.zeros(int(lead_secs * RATE), np.float32), resample(data, rate, RATE)])
    return float_to_pcm16(samples)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class FramesClient:
    """One client of the bot's WebSocket (pipecat's protobuf frames): sends 16-bit PCM, collects the
    events and audio it gets. The flood bench and the reliability tests both use it."""

    def __init__(self, url: str, local_addr: str | None = None):
        """``local_addr``: the address to connect from (127.0.0.2: another host, as the bot sees it)."""
        from pipecat.serializers.protobuf import ProtobufFrameSerializer

        self.url = url
        self.local_addr = local_addr
        self.events: list[dict[str, Any]] = []
        self.audio_bytes = 0
        self.closed = asyncio.Event()
        self._ser = ProtobufFrameSerializer()
        self._changed = asyncio.Event()
        self._ws: Any = None
        self._receiver: asyncio.Task | None = None

    async def __aenter__(self) -> FramesClient:
        import websockets

        extra = {"local_addr": (self.local_addr, 0)} if self.local_addr else {}
        self._ws = await websockets.connect(self.url, max_size=None, **extra)
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
        import websockets
        from pipecat.frames.frames import InputAudioRawFrame, InputTransportMessageFrame

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

    async def send_audio(self, pcm: bytes, rate: int = RATE, channels: int = 1) -> None:
        """One audio message as it is given (no splitting)."""
        from pipecat.frames.frames import OutputAudioRawFrame

        await self._ws.send(await self._ser.serialize(OutputAudioRawFrame(pcm, rate, channels)))

    async def stream(self, pcm: bytes, rate: int = RATE, realtime: bool = True, channels: int = 1) -> None:
        """``pcm`` in 20 ms messages, in real time (absolute schedule) or as fast as the socket takes them."""
        step = rate // 50 * 2 * channels
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, i in enumerate(range(0, len(pcm), step)):
            chunk = pcm[i : i + step]
            await self.send_audio(chunk + b"\x00" * (step - len(chunk)), rate, channels)
            if realtime:
                await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
            elif n % 25 == 0:
                await asyncio.sleep(0)

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.events]

    def count(self, kind: str) -> int:
        return self.types().count(kind)

    async def wait_for(
        self, predicate: Callable[[FramesClient], bool], what: str, timeout: float = 90.0
    ) -> None:
        """Wait until ``predicate(self)`` holds (an AssertionError naming ``what`` at the timeout)."""

        async def loop() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; events: {self.types()[-30:]}") from None

    def final_metrics(self) -> list[dict[str, Any]]:
        """Each turn's last ``turn-metrics`` event."""
        by_turn: dict[int, dict[str, Any]] = {}
        for e in self.events:
            if e.get("type") == "turn-metrics":
                by_turn[e.get("turn", 0)] = e
        return [by_turn[k] for k in sorted(by_turn)]

    def answered(self) -> int:
        """Turns whose bot has stopped speaking (a ``turn-metrics`` event has come)."""
        return len(self.final_metrics())

    async def wait_for_turns(self, n: int, timeout: float) -> bool:
        """Stream silence in real time, as a microphone does, until ``n`` turns are answered.

        False at the timeout. (The bot ends a session that sends no audio for a while.)
        """
        deadline = time.monotonic() + timeout
        while self.answered() < n:
            if time.monotonic() > deadline:
                return False
            await self.stream(bytes(STEP_BYTES * 5))
        return True


def cpu_secs(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def flood(
    url: str,
    pcm: bytes,
    max_audio_secs: float,
    max_wall_secs: float,
    reconnect: bool = False,
    local_addr: str | None = None,
) -> dict[str, float]:
    """Send ``pcm`` over and over as fast as the socket takes it, until either bound is reached.

    Disconnected by the bot, it stops, or with ``reconnect`` connects again after 0.2 s (a
    determined flooder). ``refused_at_once`` counts connections closed before any of their audio
    was sent (the bot's cooldown).
    """
    import websockets

    sent_bytes = 0
    connections = refused = at_once = 0
    start = time.monotonic()

    def more() -> bool:
        return sent_bytes < max_audio_secs * RATE * 2 and time.monotonic() - start < max_wall_secs

    while more():
        connections += 1
        before = sent_bytes
        try:
            async with FramesClient(url, local_addr) as client:
                await asyncio.sleep(0.05)  # a refusal's close frame comes at once
                if client.closed.is_set():
                    raise websockets.ConnectionClosedOK(None, None)
                while more():
                    for i in range(0, len(pcm), STEP_BYTES):
                        await client.send_audio(pcm[i : i + STEP_BYTES].ljust(STEP_BYTES, b"\x00"))
                        sent_bytes += STEP_BYTES
                    await asyncio.sleep(0)
        except (websockets.ConnectionClosed, OSError, websockets.InvalidStatus):
            refused += 1
            at_once += sent_bytes == before
            if not reconnect:
                break
            await asyncio.sleep(0.2)
    return {
        "audio_secs_sent": round(sent_bytes / RATE / 2, 1),
        "wall_secs": round(time.monotonic() - start, 1),
        "connections": connections,
        "disconnected": refused,
        "refused_at_once": at_once,
    }


def main(argv: list[str] | None = None) -> int:
    """The flooder process: prints one JSON line with what it sent."""
    p = argparse.ArgumentParser(
        description="Flood a voxtral-pipeline WebSocket bot with audio (loopback only)."
    )
    p.add_argument("url")
    p.add_argument("--text", default="Tell me everything you know about the history of Paris, please.")
    p.add_argument("--max-audio-secs", type=float, default=9000.0)
    p.add_argument("--max-wall-secs", type=float, default=60.0)
    p.add_argument("--reconnect", action="store_true", help="connect again when disconnected")
    p.add_argument("--local-addr", help="connect from this loopback address (127.0.0.2: another host)")
    args = p.parse_args(argv)
    if args.local_addr and not args.local_addr.startswith("127."):
        raise SystemExit("--local-addr must be a loopback address (127.x.x.x)")
    if not args.url.startswith(("ws://127.0.0.1:", "ws://localhost:", "ws://[::1]:")):
        raise SystemExit("the flooder only sends to a bot on this machine (ws://127.0.0.1:PORT/...)")
    os.environ.setdefault("LOGURU_LEVEL", "WARNING")
    pcm = speech_pcm(args.text)
    result = asyncio.run(
        flood(args.url, pcm, args.max_audio_secs, args.max_wall_secs, args.reconnect, args.local_addr)
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
