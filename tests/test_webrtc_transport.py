"""Browser WebRTC transport on loopback: an aiortc peer talks to the bot's /api/offer.

The peer does what the browser page does: sends its microphone (recorded espeak speech, paced in
real time) as an Opus track, opens a data channel for events and keep-alive pings, and plays the
bot's track. No STUN/TURN; everything on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.transport_helpers import TOKEN, dummy_config, question_pcm, running_server
from voxtral_pipeline.testing.peer import SpeechTrack
from voxtral_pipeline.testing.speech import needs_espeak


@pytest.fixture
async def server():
    config = dummy_config(
        "webrtc",
        **{
            "transport.server.token": TOKEN,
            "transport.server.max_sessions": 1,
            "transport.server.max_message_bytes": 65536,
        },
    )
    async with running_server(config) as bot:
        yield bot


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body,
    token: str | None = TOKEN,
    content_type: str = "application/json",
    **headers: str,
):
    headers = {"Content-Type": content_type, **headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with http.post(url + "api/offer", data=data, headers=headers) as res:
        return res.status, await res.json()


async def _offer(pc: RTCPeerConnection) -> dict:
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}


async def test_offer_security(server):
    async with aiohttp.ClientSession() as http:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("audio", direction="sendrecv")
            offer = await _offer(pc)
            assert (await _post(http, server.url, offer, token=None))[0] == 401
            assert (await _post(http, server.url, offer, token="wrong"))[0] == 401
            status, body = await _post(http, server.url, b"{not json")
            assert status == 400 and "malformed" in body["error"]
            status, body = await _post(http, server.url, {"sdp": "x" * 70000, "type": "offer"})
            assert status == 413
            assert (await _post(http, server.url, {"type": "answer"}))[0] == 400
        finally:
            await pc.close()
    assert not server.sessions


@needs_espeak
async def test_speech_in_bot_audio_and_events_out(server):
    pc = RTCPeerConnection()
    pc.addTrack(SpeechTrack(question_pcm()))
    channel = pc.createDataChannel("events", ordered=True)
    events: list[dict] = []
    peaks: list[int] = []
    done = asyncio.Event()

    @channel.on("message")
    def on_message(message):
        event = json.loads(message)
        events.append(event)
        if event.get("type") == "turn-metrics":
            done.set()

    async def play(track):
        while True:
            frame = await track.recv()
            peaks.append(int(np.abs(frame.to_ndarray().astype(np.int32)).max()))

    players: list[asyncio.Task] = []

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            players.append(asyncio.ensure_future(play(track)))

    junk_sent = []

    async def pinger():
        while True:
            if channel.readyState == "open":
                if not junk_sent:  # malformed data-channel messages are logged and dropped
                    channel.send("{not json")
                    channel.send(json.dumps([1, 2, 3]))
                    junk_sent.append(True)
                channel.send("ping")
            await asyncio.sleep(0.5)

    pings = asyncio.ensure_future(pinger())
    try:
        async with aiohttp.ClientSession() as http:
            status, answer = await _post(http, server.url, await _offer(pc))
            assert status == 200, answer
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

            # One session at most: another peer is refused politely while this one talks.
            other = RTCPeerConnection()
            try:
                other.addTransceiver("audio", direction="sendrecv")
                status, body = await _post(http, server.url, await _offer(other))
                assert status == 429 and "busy" in body["error"]
            finally:
                await other.close()

            await asyncio.wait_for(done.wait(), 90)
    finally:
        pings.cancel()
        for task in players:
            task.cancel()
        await pc.close()

    assert junk_sent
    types = [e["type"] for e in events]
    assert "user-turn" in types and "bot-text" in types, types
    metrics = next(e for e in events if e["type"] == "turn-metrics")
    assert metrics["voice_to_voice_ms"] is not None
    assert peaks and max(peaks) > 300, "no bot audio came back on the track"
    for _ in range(100):  # the session ends once the peer has gone
        if not server.sessions:
            break
        await asyncio.sleep(0.1)
    assert not server.sessions
