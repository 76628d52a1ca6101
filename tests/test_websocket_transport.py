"""WebSocket transport on loopback: a client speaking pipecat's protobuf protocol talks to the bot.

One bot server (dummy models, token, one session at most) serves every test here; the client is
the same code as examples/websocket_client.py uses: ``ProtobufFrameSerializer`` over ``websockets``.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from pipecat.frames.frames import InputAudioRawFrame, InputTransportMessageFrame, OutputAudioRawFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from tests.transport_helpers import TOKEN, dummy_config, question_pcm, running_server
from voxtral_pipeline.server import WS_CLOSE_BAD_TOKEN, WS_CLOSE_BUSY
from voxtral_pipeline.testing.speech import needs_espeak

MAX_BYTES = 65536


@pytest.fixture
async def server():
    config = dummy_config(
        "websocket",
        **{
            "transport.server.token": TOKEN,
            "transport.server.max_sessions": 1,
            "transport.server.max_message_bytes": MAX_BYTES,
        },
    )
    async with running_server(config) as bot:
        yield bot


async def _close_code(url: str) -> tuple[int | None, str]:
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code, ws.close_reason


async def test_wrong_or_missing_token_is_refused(server):
    for url in (server.url, f"{server.url}?token=wrong"):
        code, reason = await _close_code(url)
        assert code == WS_CLOSE_BAD_TOKEN and "token" in reason
    assert not server.sessions


@needs_espeak
async def test_speech_in_bot_audio_and_events_out(server):
    """Recorded speech in; bot audio in 20 ms packets, bot text and the turn's waterfall out.

    Junk (not protobuf, a text message, an oversized message, audio with half a sample) is sent
    mid-session and must be dropped without ending it; a second client is refused while the
    first one talks.
    """
    ser = ProtobufFrameSerializer()
    pcm = question_pcm()
    step = 640  # 20 ms at 16 kHz
    audio_packets: list[int] = []
    events: list[dict] = []
    done = asyncio.Event()

    async with websockets.connect(f"{server.url}?token={TOKEN}", max_size=None) as ws:

        async def receive():
            async for raw in ws:
                frame = await ser.deserialize(raw)
                if isinstance(frame, InputAudioRawFrame):
                    audio_packets.append(len(frame.audio))
                elif isinstance(frame, InputTransportMessageFrame):
                    events.append(frame.message)
                    if frame.message.get("type") == "turn-metrics" and audio_packets:
                        done.set()

        receiver = asyncio.create_task(receive())
        junk_sent = False
        try:
            offset = 0
            loop = asyncio.get_running_loop()
            start = loop.time()
            n = 0
            while not done.is_set():
                chunk = pcm[offset : offset + step] if offset < len(pcm) else b"\x00" * step
                chunk += b"\x00" * (step - len(chunk))
                offset += step
                await ws.send(await ser.serialize(OutputAudioRawFrame(chunk, 16000, 1)))
                n += 1
                if n == 25 and not junk_sent:
                    junk_sent = True
                    await ws.send(b"\xff\xfe not a protobuf frame")
                    await ws.send("a text message")
                    await ws.send(b"\x00" * (MAX_BYTES + 1))
                    await ws.send(await ser.serialize(OutputAudioRawFrame(b"\x01\x02\x03", 16000, 1)))
                    # Still one session: a second client is refused politely while this one talks.
                    code, reason = await _close_code(f"{server.url}?token={TOKEN}")
                    assert code == WS_CLOSE_BUSY and "busy" in reason
                assert loop.time() - start < 90, f"no answer; events so far: {events[:20]}"
                await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
        finally:
            receiver.cancel()

    assert junk_sent
    session = next(iter(server.sessions.values()), None) or server.finished[-1]
    assert session.voice.transport._params.serializer.dropped == 4  # each piece of junk, and nothing else
    types = [e["type"] for e in events]
    assert "user-turn" in types and "bot-text" in types, types
    assert types.index("user-turn") < types.index("bot-text")
    metrics = next(e for e in events if e["type"] == "turn-metrics")
    assert metrics["voice_to_voice_ms"] is not None and metrics["ttft_ms"] is not None
    assert metrics["ttft_ms"] <= metrics["voice_to_voice_ms"]
    # 20 ms packets at 24 kHz, 16-bit mono: 960 bytes (the last of a reply may be shorter).
    assert audio_packets and sum(audio_packets) > 0
    assert max(audio_packets) == 960 and audio_packets.count(960) >= len(audio_packets) - 2

    # The session ends with its client, and its slot is free again.
    for _ in range(100):
        if not server.sessions:
            break
        await asyncio.sleep(0.1)
    assert not server.sessions
    async with websockets.connect(f"{server.url}?token={TOKEN}") as ws:
        await ws.send(await ProtobufFrameSerializer().serialize(OutputAudioRawFrame(b"\x00" * 640, 16000, 1)))
        # Accepted: nothing closes it for a second (RTVI may tell it things, e.g. metrics).
        ser, loop = ProtobufFrameSerializer(), asyncio.get_running_loop()
        end = loop.time() + 1.0
        while (left := end - loop.time()) > 0:
            try:
                frame = await ser.deserialize(await asyncio.wait_for(ws.recv(), left))
            except asyncio.TimeoutError:
                break
            assert isinstance(frame, InputTransportMessageFrame), frame
            assert frame.message["label"] == "rtvi-ai", frame.message


async def test_status_reports_limits(server):
    import json
    import urllib.request

    url = server.url.replace("ws://", "http://").replace("/ws", "/status")
    data = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read()))
    assert data["transport"] == "websocket" and data["token_required"] is True
    assert data["max_sessions"] == 1
