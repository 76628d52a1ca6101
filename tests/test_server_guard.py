"""Nobody locks, floods or poisons the bot's server: the attacks of issue 17, each refused.

A real ``BotServer`` on 127.0.0.1 with the dummy models; requests are made the way an attacker
would (raw HTTP where a client library would fix the request up). Nothing here asserts a
duration; waits have fail-safe timeouts only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re

import aiohttp
import pytest
import websockets
from aiortc import RTCPeerConnection

from tests.reliability_helpers import WSClient, poll
from tests.transport_helpers import TOKEN, dummy_config, running_server
from voxtral_pipeline.server_guard import allowed_hosts, split_host
from voxtral_pipeline.transports.webrtc import offer_audio_problem

LIMIT = 65536


@pytest.fixture
async def webrtc():
    config = dummy_config(
        "webrtc",
        **{
            "transport.server.max_sessions": 2,
            "transport.server.max_message_bytes": LIMIT,
            "transport.server.media_timeout_secs": 1.0,
            "transport.server.allowed_origins": ["https://app.example.com"],
        },
    )
    async with running_server(config) as bot:
        yield bot


async def _raw(port: int, head: str, body: bytes = b"", read: bool = True) -> tuple[int, bytes]:
    """Send a raw HTTP request (head without the final blank line); return the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30) if read else b""
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data.split(b"\r\n\r\n", 1)[-1]


def _ws_upgrade(path: str, host: str, origin: str | None = None) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\nHost: {host}\nUpgrade: websocket\nConnection: Upgrade\n"
        f"Sec-WebSocket-Key: {key}\nSec-WebSocket-Version: 13"
    )
    return head + (f"\nOrigin: {origin}" if origin else "")


async def _offer_sdp(direction: str = "sendrecv", kind: str = "audio") -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


# --- Local servers are local --------------------------------------------------------------------


async def test_a_foreign_host_header_is_refused_for_pages_offers_and_websockets(webrtc):
    port = webrtc.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io"):
        status, body = await _raw(port, f"GET / HTTP/1.1\nHost: {host}\nConnection: close")
        assert status == 403 and b"allowed_hosts" in body
        status, _ = await _raw(
            port,
            f"POST /api/offer HTTP/1.1\nHost: {host}\nContent-Type: application/json\n"
            "Content-Length: 2\nConnection: close",
            b"{}",
        )
        assert status == 403
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, _ = await _raw(port, f"GET /status HTTP/1.1\nHost: {host}\nConnection: close")
        assert status == 200, host
    assert not webrtc.sessions


def test_allowed_hosts_follow_the_bind():
    assert set(allowed_hosts("127.0.0.1", [])) == {"127.0.0.1", "localhost", "::1"}
    assert "bot.lan" in allowed_hosts("127.0.0.1", ["bot.lan"])
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", []) is None  # every address bound: a token is the protection
    assert allowed_hosts("192.168.1.20", []) == ["192.168.1.20"]
    assert split_host("[::1]:7860") == "::1" and split_host("LocalHost:80") == "localhost"


async def test_cross_origin_offers_and_simple_requests_are_refused(webrtc):
    sdp = await _offer_sdp()
    async with aiohttp.ClientSession() as http:

        async def post(body: str, **headers: str) -> int:
            async with http.post(webrtc.url + "api/offer", data=body, headers=headers) as res:
                return res.status

        offer = json.dumps({"sdp": sdp, "type": "offer"})
        # A page on another site: a "simple" request needs no preflight, so the server must refuse it.
        assert await post(offer, **{"Content-Type": "text/plain", "Origin": "https://evil.example"}) == 403
        assert (
            await post(offer, **{"Content-Type": "application/json", "Origin": "https://evil.example"}) == 403
        )
        assert await post(offer, **{"Content-Type": "application/json", "Origin": "null"}) == 403
        # Same origin but not JSON: refused too (the offer is a JSON API).
        own = f"http://127.0.0.1:{webrtc.port}"
        assert await post(offer, **{"Content-Type": "text/plain", "Origin": own}) == 415
        assert await post(offer, **{"Content-Type": "application/x-www-form-urlencoded"}) == 415
    assert not webrtc.sessions
    assert webrtc.asgi.refused >= 5


async def test_websocket_origin_must_be_own_or_configured():
    config = dummy_config(
        "websocket",
        **{
            "transport.server.allowed_origins": ["https://app.example.com"],
            "transport.server.max_sessions": 2,
        },
    )
    async with running_server(config) as bot:
        port = bot.port
        status, _ = await _raw(port, _ws_upgrade("/ws", f"127.0.0.1:{port}", "https://evil.example"))
        assert status == 403
        status, _ = await _raw(port, _ws_upgrade("/ws", f"evil.example:{port}"))
        assert status == 403
        for origin in (f"http://127.0.0.1:{port}", "https://app.example.com", None):
            async with websockets.connect(bot.url, origin=origin) as ws:
                await poll(lambda: len(bot.sessions) == 1, "the session to start")
                await ws.close()
            await poll(lambda: not bot.sessions, "the session to end")


# --- Bounded bodies -------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_refused_before_it_is_read(webrtc):
    port = webrtc.port
    head = f"POST /api/offer HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json"
    # 1.5 GB announced, none sent: the answer comes before a byte of the body.
    status, body = await _raw(port, f"{head}\nContent-Length: 1500000000")
    assert status == 413 and str(LIMIT).encode() in body

    # A chunked body: refused as soon as it passes the limit, the rest never read.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"x" * 16384
    sent = 0
    try:
        writer.write(f"{head}\nTransfer-Encoding: chunked\n\n".replace("\n", "\r\n").encode())
        status_line = b""
        while sent < 50 * 2**20 and not status_line:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            try:
                await writer.drain()
                status_line = await asyncio.wait_for(reader.readline(), 0.01)
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                status_line = await reader.readline()
    finally:
        writer.close()
    assert b" 413 " in status_line
    assert sent < 20 * 2**20  # refused long before 50 MB were sent
    assert not webrtc.sessions


async def test_malformed_bodies_are_400_not_500(webrtc):
    async with aiohttp.ClientSession() as http:
        for body in (
            [1, 2],
            {"sdp": "v=0", "type": "offer", "pc_id": ["a", "b"]},
            {"sdp": 5, "type": "offer"},
        ):
            async with http.post(webrtc.url + "api/offer", json=body) as res:
                assert res.status == 400, body
        patches = (
            {"pc_id": ["x"], "candidates": []},
            {"pc_id": "nope", "candidates": []},
            {"candidates": "x"},
        )
        for body in patches:
            async with http.patch(webrtc.url + "api/offer", json=body) as res:
                assert res.status in (400, 404), body


# --- Sessions must prove themselves ---------------------------------------------------------------


async def test_sdp_without_usable_audio_is_refused():
    sendrecv = await _offer_sdp()
    assert offer_audio_problem(sendrecv) is None
    assert offer_audio_problem(await _offer_sdp("sendonly")) is None
    assert "recvonly" in offer_audio_problem(await _offer_sdp("recvonly"))
    assert "no audio section" in offer_audio_problem(await _offer_sdp(kind="video"))
    assert "not an SDP" in offer_audio_problem("x")
    disabled = re.sub(r"^m=audio \d+ ", "m=audio 0 ", sendrecv, flags=re.M)
    assert "disabled" in offer_audio_problem(disabled)
    no_codec = "\n".join(ln for ln in sendrecv.splitlines() if not ln.startswith("a=rtpmap"))
    assert "codec" in offer_audio_problem(no_codec)


async def test_offers_that_cannot_bring_audio_start_no_session(webrtc):
    async with aiohttp.ClientSession() as http:
        bodies = [
            {"sdp": "x", "type": "offer"},  # the three-request lock-out
            {"sdp": await _offer_sdp(kind="video"), "type": "offer"},
            {"sdp": await _offer_sdp("recvonly"), "type": "offer"},
        ]
        for body in bodies * 2:
            async with http.post(webrtc.url + "api/offer", json=body) as res:
                assert res.status == 400 and "unusable offer" in (await res.json())["error"]
    assert not webrtc.sessions and not webrtc.finished


async def test_a_webrtc_session_whose_media_never_connects_is_ended_and_its_slot_freed(webrtc):
    # Valid offers whose peers never take the answer: they fill both slots, then must be dropped.
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                webrtc.url + "api/offer", json={"sdp": await _offer_sdp(), "type": "offer"}
            ) as res:
                assert res.status == 200
        assert len(webrtc.sessions) == 2
        await poll(lambda: not webrtc.sessions, "the sessions without media to end")
        ended = [s.info.get("ended_because") for s in webrtc.finished]
        assert ended == ["no audio within 1 s of the start"] * 2
        # The slots are free again: a new offer is taken, not refused with 429.
        async with http.post(
            webrtc.url + "api/offer", json={"sdp": await _offer_sdp(), "type": "offer"}
        ) as res:
            assert res.status == 200


async def test_websocket_sessions_without_audio_are_ended():
    config = dummy_config(
        "websocket",
        **{
            "transport.server.max_sessions": 2,
            "transport.server.media_timeout_secs": 1.0,
            "transport.server.audio_idle_secs": 1.0,
            "transport.server.token": TOKEN,
        },
    )
    async with running_server(config) as bot:
        url = f"{bot.url}?token={TOKEN}"
        async with WSClient(url) as silent, WSClient(url) as talker:
            await talker.stream(bytes(2 * 16000), realtime=True)  # one second of audio, then nothing
            await silent.closed.wait()
            await talker.closed.wait()
        await poll(lambda: len(bot.finished) == 2, "both sessions to wind down")
        reasons = sorted(s.info.get("ended_because") for s in bot.finished)
        assert reasons == ["no audio for 1 s", "no audio within 1 s of the start"]
        assert not bot.sessions


def test_empty_token_is_an_error():
    from voxtral_pipeline.config import ConfigError, load_config

    for token in ("", " "):
        with pytest.raises(ConfigError, match="empty token"):
            load_config(overrides={"transport.server.token": token}, environ={})


# --- A flooder cut off is refused for a while (its address, not everyone on the machine) ------------


def test_the_flood_cooldown_doubles_for_repeat_offences_up_to_its_bound_then_forgets():
    from voxtral_pipeline.server_guard import FloodCooldown

    now = [0.0]
    cool = FloodCooldown(10.0, 50.0, clock=lambda: now[0])
    assert cool.retry_after("203.0.113.7") is None
    assert cool.strike("203.0.113.7") == 10.0
    assert cool.retry_after("203.0.113.7") == 10.0 and cool.retry_after("203.0.113.8") is None
    now[0] += 10.0
    assert cool.retry_after("203.0.113.7") is None  # served its time
    assert [cool.strike("203.0.113.7") for _ in range(4)] == [20.0, 40.0, 50.0, 50.0]
    now[0] += 50.0 + 50.0 + 1  # a clean max_secs after its cooldown: forgotten at the next strike
    assert cool.strike("198.51.100.1") == 10.0
    assert len(cool) == 1 and cool.strike("203.0.113.7") == 10.0


def test_the_flood_cooldown_table_is_bounded():
    from voxtral_pipeline.server_guard import FloodCooldown

    now = [0.0]
    cool = FloodCooldown(60.0, 600.0, max_entries=8, clock=lambda: now[0])
    for i in range(1000):
        cool.strike(f"10.0.{i // 256}.{i % 256}")
    assert len(cool) == 8
    assert cool.retry_after("10.0.3.231") is not None  # the newest are kept
    assert cool.retry_after("10.0.0.0") is None  # the oldest went


def test_the_flood_cooldown_keys_an_ipv6_host_by_its_64():
    from voxtral_pipeline.server_guard import FloodCooldown, address_key

    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::5") != address_key("2001:db8:1:2::5")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    cool = FloodCooldown(10.0, 10.0, clock=lambda: 0.0)
    cool.strike("2001:db8:1:2::5")
    assert cool.retry_after("2001:db8:1:2::abcd") == 10.0 and cool.retry_after("2001:db8:9::1") is None


async def test_an_address_in_its_cooldown_gets_429_for_start_and_offers_and_no_session(webrtc):
    port = webrtc.port
    webrtc.cooldown.strike("127.0.0.1")
    built = webrtc.sessions_built
    offer = {"sdp": await _offer_sdp(), "type": "offer"}
    async with aiohttp.ClientSession() as http:
        for path, body in (("/start", {}), ("/api/offer", offer)):
            async with http.post(f"http://127.0.0.1:{port}{path}", json=body) as r:
                assert r.status == 429, path
                assert r.headers["Retry-After"] == "60"
                assert "cut off for flooding" in (await r.json())["error"]
    # Another host (another loopback address) is served as usual.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as http:
        async with http.post(f"http://127.0.0.1:{port}/start", json={}) as r:
            assert r.status == 200 and "sessionId" in await r.json()
    assert webrtc.sessions_built == built
