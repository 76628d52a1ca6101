"""Shared Kokoro test fixtures: one dummy:tiny model per test session.

Import the fixtures by name in a test module (``from tests.kokoro_fixtures import kokoro_tiny``). The
build is memoized at module level, so the model is made once even when several modules import
the fixture (pytest gives each importing module its own fixture definition).
"""

from __future__ import annotations

import socket
from functools import lru_cache

import pytest

from voxtral_pipeline.models.kokoro import KokoroBundle, load_kokoro


@lru_cache(maxsize=1)
def _tiny_bundle() -> KokoroBundle:
    # The user's dummy cache (~/.cache/voxtral-pipeline/dummy or $VOXTRAL_PIPELINE_CACHE) is used
    # on purpose: the second test session loads instead of rebuilding.
    bundle = load_kokoro("dummy:tiny", "af_heart", device="cpu", seed=0)
    bundle.warm_up()
    return bundle


@pytest.fixture(scope="session")
def kokoro_tiny() -> KokoroBundle:
    """The dummy:tiny Kokoro (seed 0, random voice af_heart), warmed up, on CPU."""
    return _tiny_bundle()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
