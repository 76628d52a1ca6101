"""examples/browser_bot.py under pipecat's own development runner (``--pipecat-runner -t webrtc``).

The runner (pipecat's server, not ours) calls the example's ``bot(runner_args)`` for an aiortc
peer's offer at its ``/api/offer``; the peer speaks a question and must get RTVI ``bot-ready``,
the bot's text and its audio back. A second session in the same process must not load the models
again (``voxtral_pipeline.runner.shared_models``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.transport_helpers import DUMMY_OVERRIDES, dummy_config, question_pcm
from voxtral_pipeline.runner import session_config, shared_models
from voxtral_pipeline.testing.peer import SpeechTrack
from voxtral_pipeline.testing.speech import needs_espeak

ROOT = Path(__file__).resolve().parent.parent


def test_shared_models_load_once_per_process(monkeypatch):
    from voxtral_pipeline import runner
    from voxtral_pipeline.server import SharedModels

    loads = []
    monkeypatch.setattr(runner, "_models", {})
    monkeypatch.setattr(SharedModels, "load", classmethod(lambda cls, config: loads.append(config) or cls()))
    config = dummy_config("webrtc")
    first = shared_models(config)
    assert shared_models(dummy_config("webrtc")) is first and len(loads) == 1
    shared_models(dummy_config("webrtc", **{"kokoro.voice": "am_adam"}))  # other models: loaded too
    assert len(loads) == 2


def test_session_config_follows_the_runner_transport():
    from pipecat.runner.types import SmallWebRTCRunnerArguments, WebSocketRunnerArguments

    config = dummy_config("webrtc")
    assert (
        session_config(config, SmallWebRTCRunnerArguments(webrtc_connection=None)).transport.kind == "webrtc"
    )
    phone = WebSocketRunnerArguments(websocket=None)
    phone.transport_type = "twilio"
    assert session_config(config, phone).transport.kind == "websocket"
    assert not session_config(config, phone).transport.rtvi  # a phone speaks no RTVI
    ws = WebSocketRunnerArguments(websocket=None)
    ws.transport_type = "websocket"
    assert session_config(config, ws).transport.rtvi


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_espeak
async def test_bot_answers_a_turn_under_pipecats_runner(tmp_path):
    port = _free_port()
    sets = [
        f"--set={k}={v}" for k, v in DUMMY_OVERRIDES.items() if k not in ("voxtral.model", "kokoro.model")
    ]
    args = [
        sys.executable,
        "examples/browser_bot.py",
        "--pipecat-runner",
        "-t",
        "webrtc",
        "--host",
        "127.0.0.1",
    ]
    args += ["--port", str(port), "--model", "dummy:tiny", "--tts-model", "dummy:tiny", *sets]
    log = open(tmp_path / "runner.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    pc = RTCPeerConnection()
    messages: list[dict] = []
    peaks: list[int] = []
    done = asyncio.Event()
    ready = asyncio.Event()  # the runner loads the models for its first session after the offer
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # the runner imports pipecat's transports: up to a minute
                assert proc.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
                try:
                    async with http.get(base + "/client/") as res:
                        if res.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            pc.addTrack(SpeechTrack(question_pcm(), speak_when=ready))
            channel = pc.createDataChannel("chat", ordered=True)

            @channel.on("open")
            def on_open():
                ready = {"version": "2.2.0", "about": {"library": "test"}}
                channel.send(
                    json.dumps({"label": "rtvi-ai", "type": "client-ready", "id": "1", "data": ready})
                )

            @channel.on("message")
            def on_message(raw):
                try:
                    m = json.loads(raw)
                except ValueError:
                    return
                messages.append(m)
                if m.get("label") == "rtvi-ai" and m.get("type") == "bot-ready":
                    ready.set()
                if m.get("label") == "rtvi-ai" and m.get("type") == "bot-stopped-speaking":
                    done.set()

            async def play(track):
                while True:
                    frame = await track.recv()
                    peaks.append(int(np.abs(frame.to_ndarray().astype(np.int32)).max()))

            players: list[asyncio.Task] = []
            pc.on("track", lambda track: players.append(asyncio.ensure_future(play(track))))
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(base + "/api/offer", json=offer) as res:
                assert res.status == 200, await res.text()
                answer = await res.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            try:
                await asyncio.wait_for(done.wait(), 120)
            finally:
                for task in players:
                    task.cancel()
    finally:
        await pc.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    rtvi = [m["type"] for m in messages if m.get("label") == "rtvi-ai"]
    assert "bot-ready" in rtvi and "bot-llm-text" in rtvi, rtvi
    assert peaks and max(peaks) > 300, "no bot audio came back"
    assert "Traceback" not in (tmp_path / "runner.log").read_text()
