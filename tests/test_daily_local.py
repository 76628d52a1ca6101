"""Daily and local audio: construction, configuration, and every error path (offline).

A real Daily room or a sound card is not available here: the Daily REST API is played by a local
aiohttp server, joining an unreachable room must fail with one clear error within the join
timeout, and local audio is tested on device lists (this machine has none).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from aiohttp import web

from tests.transport_helpers import dummy_config, importable, shared_models
from voxtral_pipeline.transports.daily import (
    DailyError,
    check_room_url,
    configured_room,
    resolve_room,
    run_until_joined_then_done,
)
from voxtral_pipeline.transports.local import AudioDevice, LocalAudioError, select_device

DEVICES = [
    AudioDevice(0, "HDA Intel PCH: ALC3246 Analog", 2, 2, 48000.0),
    AudioDevice(1, "USB Headset", 1, 2, 48000.0),
    AudioDevice(2, "HDMI 0", 0, 8, 48000.0),
]


needs_daily = pytest.mark.skipif(not importable("daily"), reason="daily-python is not installed")
needs_pyaudio = pytest.mark.skipif(not importable("pyaudio"), reason="PyAudio is not installed")


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAILY_")}
    return subprocess.run(
        [sys.executable, "-m", "voxtral_pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _one_error_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("voxtral-pipeline: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]


# ---- Daily -----------------------------------------------------------------------------------


def test_room_from_config_or_environment():
    config = dummy_config("daily")
    assert configured_room(config, environ={}) is None
    room = configured_room(config, environ={"DAILY_ROOM_URL": "https://me.daily.co/a", "DAILY_TOKEN": "t"})
    assert (room.url, room.token, room.created) == ("https://me.daily.co/a", "t", False)
    config = dummy_config("daily", **{"transport.daily.room_url": "https://me.daily.co/b"})
    assert configured_room(config, environ={"DAILY_ROOM_URL": "https://me.daily.co/a"}).url.endswith("/b")
    for bad in ("me.daily.co/room", "https://me.daily.co/", "ftp://x/y"):
        with pytest.raises(DailyError, match="not a Daily room URL"):
            check_room_url(bad)


async def test_no_room_and_no_api_key_is_one_clear_error():
    with pytest.raises(DailyError, match="DAILY_API_KEY"):
        await resolve_room(dummy_config("daily"), environ={})


@pytest.fixture
async def daily_api():
    """A stand-in for Daily's REST API on 127.0.0.1: rooms and meeting tokens."""
    calls: list[tuple[str, str, dict]] = []
    mode = {"status": 200, "delay": 0.0}

    async def rooms(request):
        body = await request.json()
        calls.append(("rooms", request.headers.get("Authorization", ""), body))
        await asyncio.sleep(mode["delay"])
        if mode["status"] != 200:
            return web.json_response({"error": "authentication-error"}, status=mode["status"])
        return web.json_response(
            {
                "id": "r1",
                "name": "bot-room",
                "api_created": True,
                "privacy": "public",
                "url": "https://test.daily.co/bot-room",
                "created_at": "2026-11-21T00:00:00.000Z",
                "config": body.get("properties", {}),
            }
        )

    async def tokens(request):
        calls.append(("meeting-tokens", request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"token": "owner-token"})

    app = web.Application()
    app.router.add_post("/v1/rooms", rooms)
    app.router.add_post("/v1/meeting-tokens", tokens)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", calls, mode
    finally:
        await runner.cleanup()


async def test_create_room_with_api_key(daily_api):
    url, calls, _ = daily_api
    config = dummy_config(
        "daily", **{"transport.daily.api_url": url, "transport.daily.room_expiry_secs": 600}
    )
    room = await resolve_room(config, environ={"DAILY_API_KEY": "key123"})
    assert (room.url, room.token, room.created) == ("https://test.daily.co/bot-room", "owner-token", True)
    assert [c[0] for c in calls] == ["rooms", "meeting-tokens"]
    assert all(c[1] == "Bearer key123" for c in calls)
    assert 0 < calls[0][2]["properties"]["exp"] - time.time() <= 600


async def test_create_room_refused_or_unanswered(daily_api):
    url, _, mode = daily_api
    config = dummy_config(
        "daily", **{"transport.daily.api_url": url, "transport.daily.join_timeout_secs": 1.0}
    )
    mode["status"] = 401
    with pytest.raises(DailyError, match="could not create a Daily room.*401"):
        await resolve_room(config, environ={"DAILY_API_KEY": "bad"})
    mode.update(status=200, delay=4.0)
    started = time.monotonic()
    with pytest.raises(DailyError, match="did not answer"):
        await resolve_room(config, environ={"DAILY_API_KEY": "key"})
    assert time.monotonic() - started < 10


@pytest.fixture
async def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    writers = []

    async def hold(reader, writer):
        writers.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.close()
        server.close()


async def _join(room_url: str, timeout: float) -> float:
    from voxtral_pipeline.pipeline import build_transport
    from voxtral_pipeline.server import build_session

    config = dummy_config(
        "daily", **{"transport.daily.room_url": room_url, "transport.daily.join_timeout_secs": timeout}
    )
    transport = build_transport(config)
    voice = build_session(config, transport, await asyncio.to_thread(shared_models))
    started = time.monotonic()
    with pytest.raises(DailyError, match="could not join the Daily room"):
        await run_until_joined_then_done(voice, transport, timeout)
    return time.monotonic() - started


@needs_daily
async def test_join_that_never_completes_is_one_error_within_the_timeout(silent_server):
    # On this offline machine daily-python cannot even resolve Daily's API host; either way the
    # session must end with one DailyError soon after join_timeout_secs, not hang.
    took = await _join(f"https://127.0.0.1:{silent_server}/room", timeout=3.0)
    assert took < 3.0 + 3.0 + 2.0  # the join timeout, the cancel grace, and slack for a slow machine


def test_cli_daily_without_room():
    _one_error_line(
        _cli("run", "-t", "daily", "--model", "dummy:tiny", "--tts-model", "dummy:tiny"), 2, "DAILY_API_KEY"
    )
    _one_error_line(_cli("run", "-t", "daily", "--room-url", "not-a-url"), 2, "not a Daily room URL")


# ---- local audio -----------------------------------------------------------------------------


def test_device_selection():
    assert select_device(DEVICES, None, "input") is None  # the system default
    assert select_device(DEVICES, "1", "input") == 1
    assert select_device(DEVICES, "usb", "input") == 1
    assert select_device(DEVICES, "hdmi", "output") == 2
    with pytest.raises(LocalAudioError, match="no input device 'hdmi'"):
        select_device(DEVICES, "hdmi", "input")  # an output-only device
    with pytest.raises(LocalAudioError, match="no input device '7'"):
        select_device(DEVICES, "7", "input")
    with pytest.raises(LocalAudioError, match="ambiguous"):
        select_device(DEVICES, "a", "output")
    with pytest.raises(LocalAudioError, match="no audio microphone"):
        select_device([DEVICES[2]], None, "input")


@needs_pyaudio
def test_local_transport_on_chosen_devices():
    from voxtral_pipeline.transports.local import build_local_transport

    config = dummy_config(
        "local", **{"transport.local.input_device": "usb", "transport.local.output_device": "0"}
    )
    transport = build_local_transport(config, DEVICES)
    params = transport._params
    assert (params.input_device_index, params.output_device_index) == (1, 0)
    assert params.audio_in_sample_rate == 16000 and params.audio_out_10ms_chunks == 2
    with pytest.raises(LocalAudioError, match="no audio speaker"):
        build_local_transport(dummy_config("local"), [AudioDevice(0, "mic only", 1, 0, 16000.0)])


@needs_pyaudio
def test_cli_local_without_devices():
    from voxtral_pipeline.transports.local import list_devices

    if any(d.max_input_channels for d in list_devices()):
        pytest.skip("this machine has a microphone")
    _one_error_line(
        _cli("run", "-t", "local", "--model", "dummy:tiny", "--tts-model", "dummy:tiny"), 2, "no audio"
    )
    listed = _cli("devices")
    assert listed.returncode == 0 and "no audio devices found" in listed.stdout
