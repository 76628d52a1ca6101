"""pipecat's RTVI protocol on the live transports, over the WebSocket transport (no browser needed).

A client that speaks RTVI sends ``client-ready`` and must get ``bot-ready``; then speech in gives
RTVI speaking state, bot text and bot output. Malformed and unknown RTVI messages get an RTVI
``error`` / ``error-response`` and the session keeps working. ``transport.rtvi = false`` turns it off;
the file transport never has it.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
)
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from tests.transport_helpers import TOKEN, dummy_config, question_pcm, running_server
from voxtral_pipeline.pipeline import rtvi_enabled
from voxtral_pipeline.processors.rtvi import PIPELINE_ERROR, ObjectsOnlyRTVIProcessor
from voxtral_pipeline.testing.speech import needs_espeak

LABEL = "rtvi-ai"


def rtvi_errors(messages: list[dict]) -> list[str]:
    return [m["data"]["error"] for m in messages if m["type"] == "error"]


def _rtvi(type_: str, data=None, id_: str = "m1") -> dict:
    return {"label": LABEL, "type": type_, "id": id_, **({"data": data} if data is not None else {})}


def test_rtvi_on_by_default_on_live_transports_only():
    for kind in ("webrtc", "websocket", "daily"):
        assert rtvi_enabled(dummy_config(kind))
        assert not rtvi_enabled(dummy_config(kind, **{"transport.rtvi": False}))
    for kind in ("file", "local"):
        assert not rtvi_enabled(dummy_config(kind))


@pytest.fixture
async def server():
    config = dummy_config(
        "websocket", **{"transport.server.token": TOKEN, "transport.server.max_sessions": 2}
    )
    async with running_server(config) as bot:
        yield bot


@needs_espeak
async def test_rtvi_client_gets_bot_ready_errors_and_a_turn(server):
    ser = ProtobufFrameSerializer()
    pcm = question_pcm()
    step = 640  # 20 ms at 16 kHz
    rtvi: list[dict] = []
    ours: list[dict] = []
    audio = 0
    done = asyncio.Event()

    async def send_message(ws, message) -> None:
        await ws.send(await ser.serialize(OutputTransportMessageUrgentFrame(message=message)))

    async with websockets.connect(f"{server.url}?token={TOKEN}", max_size=None) as ws:

        async def receive():
            nonlocal audio
            async for raw in ws:
                frame = await ser.deserialize(raw)
                if isinstance(frame, InputAudioRawFrame):
                    audio += len(frame.audio)
                elif isinstance(frame, InputTransportMessageFrame):
                    m = frame.message
                    (rtvi if m.get("label") == LABEL else ours).append(m)
                    if m.get("type") == "bot-stopped-speaking" and m.get("label") == LABEL:
                        done.set()

        receiver = asyncio.create_task(receive())
        try:
            loop = asyncio.get_running_loop()
            start, n, offset = loop.time(), 0, 0
            while not done.is_set():
                if n == 5:
                    await send_message(
                        ws, _rtvi("client-ready", {"version": "1.0.0", "about": {"library": "test"}})
                    )
                    # Bad input: not RTVI, malformed RTVI, an unknown type, a non-object.
                    await send_message(ws, {"label": LABEL, "type": 7})
                    await send_message(ws, _rtvi("no-such-type", id_="u1"))
                    await send_message(ws, {"hello": "not rtvi"})
                    await send_message(ws, ["a", "list"])
                chunk = pcm[offset : offset + step] if offset < len(pcm) else b"\x00" * step
                chunk += b"\x00" * (step - len(chunk))
                offset += step
                await ws.send(await ser.serialize(OutputAudioRawFrame(chunk, 16000, 1)))
                n += 1
                assert loop.time() - start < 90, f"no answer; rtvi so far: {rtvi[:20]}"
                await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
            # The user's words: a TranscriptionFrame (the Voxtral stage's transcript) reaches the
            # client as RTVI user-transcription.
            session = next(iter(server.sessions.values()))
            await session.voice.worker.queue_frame(
                TranscriptionFrame("hello there", "user", "2026-01-01T00:00:00Z")
            )
            # A pipeline error: the client hears of it, not its details.
            await session.voice.worker.queue_frame(ErrorFrame("secret detail at /srv/models"))
            for _ in range(100):
                said = [m["data"]["text"] for m in rtvi if m["type"] == "user-transcription"]
                if "hello there" in said and len(rtvi_errors(rtvi)) >= 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            receiver.cancel()

    heard = [m["data"] for m in rtvi if m["type"] == "user-transcription"]
    # Besides the one sent here, the stage's own idle-time transcript may have come first.
    assert any(h["text"] == "hello there" and h["final"] for h in heard), rtvi
    types = [m["type"] for m in rtvi]
    assert "bot-ready" in types, types
    errors = rtvi_errors(rtvi)
    assert PIPELINE_ERROR in errors and not any("secret" in e for e in errors), errors
    assert any("Invalid RTVI" in e and "type" in e for e in errors), errors  # {"type": 7}
    assert any(e.endswith("not a JSON object") for e in errors), errors  # ["a", "list"]
    assert not any("has no attribute" in e for e in errors), errors
    assert any(m["type"] == "error-response" and m["id"] == "u1" for m in rtvi), rtvi
    for t in (
        "user-started-speaking",
        "user-stopped-speaking",
        "bot-started-speaking",
        "bot-llm-text",
        "bot-output",
    ):
        assert t in types, (t, types)
    assert "".join(m["data"]["text"] for m in rtvi if m["type"] == "bot-llm-text").strip()
    assert audio > 0
    # Our own events still come beside RTVI's, for our page.
    assert "bot-text" in [m["type"] for m in ours]
    session = next(iter(server.sessions.values()), None) or server.finished[-1]
    assert isinstance(session.voice.worker.rtvi, ObjectsOnlyRTVIProcessor)
    assert session.voice.worker.rtvi.ignored == 2  # {"hello": ...} and the list, each once
