"""Shared pieces of the transport tests: dummy-model config, models loaded once, test speech."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import PipelineConfig, load_config
from voxtral_pipeline.testing.speech import speak

TOKEN = "s3cret-token"
DUMMY_OVERRIDES: dict[str, Any] = {
    "voxtral.model": "dummy:tiny",
    "kokoro.model": "dummy:tiny",
    "voxtral.max_new_tokens": 8,
    "voxtral.seed": 0,
    "metrics.log_turns": False,
}


def dummy_config(kind: str, **overrides: Any) -> PipelineConfig:
    """A config for ``kind`` with dummy models, on 127.0.0.1 and any free port."""
    base = {**DUMMY_OVERRIDES, "transport.kind": kind, "transport.server.port": 0}
    return load_config(overrides={**base, **overrides}, environ={})


@functools.cache
def shared_models():
    """Dummy models loaded once for every transport test in the process."""
    from voxtral_pipeline.server import SharedModels

    return SharedModels.load(dummy_config("webrtc"))


@functools.cache
def question_pcm(text: str = "What is the capital of France?", rate: int = 16000) -> bytes:
    """A spoken question as 16-bit mono PCM, with a little silence before it."""
    samples = np.concatenate([np.zeros(int(0.3 * rate), np.float32), speak(text, rate)])
    return float_to_pcm16(samples)


@contextlib.asynccontextmanager
async def running_server(config: PipelineConfig) -> AsyncIterator:
    """A started ``BotServer`` on the shared dummy models, stopped on the way out."""
    from voxtral_pipeline.server import BotServer

    bot = BotServer(config, await asyncio.to_thread(shared_models))
    await bot.start()
    try:
        yield bot
    finally:
        await bot.stop()


def importable(module: str) -> bool:
    """Whether an optional package (daily, pyaudio) can be imported here."""
    try:
        __import__(module)
        return True
    except Exception:
        return False
