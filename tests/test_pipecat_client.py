"""pipecat's stock browser client (npm ``@pipecat-ai/client-js`` + ``small-webrtc-transport``, pinned
in ``tests/js``) in headless Chromium against the bot, from a page on a second origin.

The page is served by a tiny static server on 127.0.0.1 (an allowed origin of the bot); Chromium's
fake microphone plays espeak speech. Both of pipecat's ways in are driven: ``client.connect`` to
``/api/offer``, and ``startBotAndConnect`` through ``/start`` and ``/sessions/{id}/api/offer``, with
trickled ICE (PATCH). Each must get ``bot-ready``, the bot's text (RTVI ``bot-llm-text``) and its
audio, and every PATCH must be a 200. pipecat's prebuilt UI must load from ``/client/`` without
console errors (it cannot connect here: its microphone code comes from Daily's CDN).

The bundle is built by the ``pipecat_bundle`` fixture (``npm ci`` + esbuild) when it is missing or
older than its sources; skipped only when npm or Chromium is not installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.transport_helpers import TOKEN, dummy_config, running_server
from voxtral_pipeline.testing.browser import CHROMIUM, chromium_page, static_server
from voxtral_pipeline.testing.speech import needs_espeak, speak, write_wav

JS = Path(__file__).parent / "js"
BUNDLE = JS / "build" / "pipecat-client.js"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")


@pytest.fixture(scope="session")
def pipecat_bundle() -> Path:
    """pipecat's client bundle, rebuilt with npm ci + esbuild when missing or stale."""
    sources = [JS / "entry.js", JS / "package.json", JS / "package-lock.json"]
    newest = max(p.stat().st_mtime for p in sources)
    if BUNDLE.exists() and BUNDLE.stat().st_mtime >= newest:
        return BUNDLE
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot build pipecat's client bundle (make test installs node)")
    installed = JS / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (JS / "package-lock.json").stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True)
    esbuild = JS / "node_modules" / ".bin" / "esbuild"
    args = [str(esbuild), "entry.js", "--bundle", "--format=iife", f"--outfile={BUNDLE.relative_to(JS)}"]
    subprocess.run(args, cwd=JS, check=True, capture_output=True)
    return BUNDLE


@pytest.fixture
def client_origin(pipecat_bundle, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for name in ("index.html", "harness.js"):
        shutil.copy(JS / name, site / name)
    shutil.copy(pipecat_bundle, site / "pipecat-client.js")
    with static_server(site) as origin:
        yield origin


@pytest.fixture
async def server(client_origin):
    config = dummy_config(
        "webrtc",
        **{
            "transport.server.token": TOKEN,
            "transport.server.max_sessions": 2,
            "transport.server.allowed_origins": [client_origin],
            "voxtral.max_new_tokens": 16,
        },
    )
    async with running_server(config) as bot:
        yield bot


async def _wait_page(cdp, expression: str, secs: float = 30.0) -> None:
    for _ in range(int(secs * 10)):
        if await cdp.evaluate(expression):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {expression}")


async def _talk(cdp, origin: str, mode: str, base: str) -> dict:
    await cdp.send("Page.navigate", url=f"{origin}/index.html")
    await _wait_page(cdp, "typeof window.runClient === 'function' && typeof window.Pipecat === 'object'")
    await cdp.evaluate(
        f"window.runClient({mode!r}, {base!r}, {TOKEN!r}).catch(e => clientLog.errors.push(String(e)))"
    )
    log: dict = {}
    for _ in range(900):  # at most 90 s
        log = json.loads(await cdp.evaluate("JSON.stringify(window.clientLog || {})") or "{}")
        done = (
            log.get("ready")
            and log.get("botText")
            and log.get("peak", 0) > 1e-3
            and log.get("events", {}).get("BotStoppedSpeaking")
        )
        if done or log.get("errors"):
            break
        await asyncio.sleep(0.1)
    await cdp.evaluate("window.client && window.client.disconnect()", await_promise=True)
    return log


@needs_espeak
async def test_stock_client_connect_and_start(server, client_origin, tmp_path):
    rate = 48000
    mic = np.concatenate([np.zeros(rate // 2, np.float32), speak("What is the capital of France?", rate)])
    mic_wav = write_wav(tmp_path / "mic.wav", np.concatenate([mic, np.zeros(rate * 6, np.float32)]), rate)
    base = server.url.rstrip("/")
    async with chromium_page(tmp_path / "profile", mic_wav) as cdp:
        logs = {mode: await _talk(cdp, client_origin, mode, base) for mode in ("connect", "start")}
        page_errors = cdp.console_errors()
        # pipecat's prebuilt UI, as pipecat's runner serves it.
        cdp.events.clear()
        await cdp.send("Page.navigate", url=f"{base}/client/?token={TOKEN}")
        await _wait_page(cdp, "document.readyState === 'complete' && document.body.innerText.length > 0")
        await asyncio.sleep(2.0)  # let its scripts run
        prebuilt_text = await cdp.evaluate("document.body.innerText")
        prebuilt_errors = cdp.console_errors(offline_ok=True)

    for mode, log in logs.items():
        assert not log["errors"], (mode, log)
        assert log["ready"] and log["connected"], (mode, log)
        assert log["botText"].strip(), (mode, log)  # RTVI bot-llm-text
        assert log["track"] and log["peak"] > 1e-3, (mode, log)  # the bot's audio, not silence
        assert log["events"].get("BotStartedSpeaking") and log["events"].get("UserStoppedSpeaking"), (
            mode,
            log,
        )
        assert log["patches"] and set(log["patches"]) == {200}, (mode, log)  # trickled ICE
    paths = [(m, p, s) for m, p, s in logs["start"]["requests"] if p != "/index.html"]
    assert ("POST", "/start", 200) in paths, paths
    assert any(
        m == "POST" and p.startswith("/sessions/") and p.endswith("/api/offer") and s == 200
        for m, p, s in paths
    )
    assert ["POST", "/api/offer", 200] in logs["connect"]["requests"], logs["connect"]["requests"]
    assert not [e for e in page_errors if "Failed to send ICE" in e or "offer" in e.lower()], page_errors
    assert prebuilt_text.strip(), "the prebuilt UI rendered nothing"
    assert not prebuilt_errors, prebuilt_errors
