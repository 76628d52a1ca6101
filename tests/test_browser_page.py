"""The browser page in headless Chromium: loads without console errors, connects, shows a turn.

Chromium's fake microphone plays recorded espeak speech into the page; the page connects over
WebRTC to a bot with dummy models, and must show the bot's words and the turn's latency
waterfall. A screenshot is saved under the test's tmp dir (and copied to
``$VOXTRAL_SCREENSHOT_DIR`` when set; ``docs/browser.png`` was made that way).
Skipped when Debian's ``chromium`` is not installed (``make test`` installs it as root).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import websockets

from tests.transport_helpers import TOKEN, dummy_config, running_server
from voxtral_pipeline.testing.speech import ESPEAK, needs_espeak, speak, write_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; make test does it as root)"
)


def _start_chromium(profile: Path, mic_wav: Path) -> tuple[subprocess.Popen, int]:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,820",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().splitlines()[0])
        if proc.poll() is not None:
            break
        import time

        time.sleep(0.1)
    proc.kill()
    pytest.fail("chromium did not start its DevTools endpoint")


class CDP:
    """Just enough of the Chrome DevTools Protocol: commands, and events collected as they come."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                self.events.append(msg)

    async def send(self, method: str, **params):
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out


@pytest.fixture
async def server():
    config = dummy_config("webrtc", **{"transport.server.token": TOKEN, "voxtral.max_new_tokens": 20})
    async with running_server(config) as bot:
        yield bot


@needs_chromium
@needs_espeak
async def test_page_connects_and_shows_a_turn(server, tmp_path):
    assert ESPEAK
    rate = 48000
    speech = speak("What is the capital of France?", rate)
    mic = np.concatenate([np.zeros(rate // 2, np.float32), speech, np.zeros(rate * 6, np.float32)])
    mic_wav = write_wav(tmp_path / "mic.wav", mic, rate)
    proc, port = await asyncio.to_thread(_start_chromium, tmp_path / "profile", mic_wav)
    try:
        targets = json.loads(
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read()
            )
        )
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            cdp = CDP(ws)
            for domain in ("Runtime", "Log", "Page"):
                await cdp.send(f"{domain}.enable")
            await cdp.send("Page.navigate", url=f"{server.url}?token={TOKEN}&autoconnect=1")
            state: dict = {}
            for _ in range(900):  # at most 90 s
                state = json.loads(await cdp.evaluate("JSON.stringify(window.voxtral || {})") or "{}")
                answered = any(t.get("voice_to_voice_ms") is not None for t in state.get("turns", []))
                if state.get("state") == "error" or (answered and state.get("botText")):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # let the last words paint
            shot = await cdp.send("Page.captureScreenshot", format="png")
            png = tmp_path / "browser.png"
            png.write_bytes(base64.b64decode(shot["data"]))
            if os.environ.get("VOXTRAL_SCREENSHOT_DIR"):
                shutil.copy(png, Path(os.environ["VOXTRAL_SCREENSHOT_DIR"]) / "browser.png")
            errors = cdp.console_errors()
            cdp.reader.cancel()
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()

    print(f"screenshot: {png}")
    assert png.stat().st_size > 10_000
    assert not errors, errors
    assert state.get("state") == "connected", state
    assert state["events"] > 0 and state["botText"], state
    assert any(t.get("voice_to_voice_ms") is not None for t in state["turns"]), state
