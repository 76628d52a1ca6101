"""Shared pieces of the reliability tests: a protobuf WebSocket client and resource snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from voxtral_pipeline.testing.flood import FramesClient
from voxtral_pipeline.testing.resources import Snapshot, rss_mb  # noqa: F401  (re-exported)

#: Fail-safe only: a broken test stops here instead of hanging; nothing asserts a duration.
WAIT_S = 90.0
STEP_MS = 20


#: One client of the bot's WebSocket: the package's, shared with the flood benchmark.
WSClient = FramesClient


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
