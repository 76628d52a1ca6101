"""The browser page in headless Chromium: loads without console errors, connects, holds three turns.

Chromium's fake microphone plays recorded espeak speech (three questions with long pauses) into
the page; the page connects over WebRTC to a bot with dummy models, and must show the bot's words,
each turn's latency waterfall, get RTVI's ``bot-ready`` (it is an RTVI client too), show the user's
words when their transcript (RTVI ``user-transcription``) arrives, and mark an
answer "(interrupted)" only where the server's metrics say the bot was cut off. A screenshot is
saved under the test's tmp dir (and copied to ``$VOXTRAL_SCREENSHOT_DIR`` when set;
``docs/browser.png`` was made that way). Skipped when Debian's ``chromium`` is not installed
(``make test`` installs it as root).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.transport_helpers import TOKEN, dummy_config, running_server
from voxtral_pipeline.testing.browser import CHROMIUM, chromium_page
from voxtral_pipeline.testing.speech import needs_espeak, speak, write_wav

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; make test does it as root)"
)
QUESTIONS = ("What is the capital of France?", "And of Italy?", "Thank you very much.")


@pytest.fixture
async def server():
    config = dummy_config("webrtc", **{"transport.server.token": TOKEN, "voxtral.max_new_tokens": 20})
    async with running_server(config) as bot:
        yield bot


@needs_chromium
@needs_espeak
async def test_page_connects_and_holds_three_turns(server, tmp_path):
    rate = 48000
    parts = [np.zeros(rate // 2, np.float32)]
    for question in QUESTIONS:
        parts += [speak(question, rate), np.zeros(rate * 8, np.float32)]
    mic_wav = write_wav(tmp_path / "mic.wav", np.concatenate(parts), rate)
    async with chromium_page(tmp_path / "profile", mic_wav) as cdp:
        await cdp.send("Page.navigate", url=f"{server.url}?token={TOKEN}&autoconnect=1")
        state: dict = {}
        for _ in range(1500):  # at most 150 s
            state = json.loads(await cdp.evaluate("JSON.stringify(window.voxtral || {})") or "{}")
            final = [t for t in state.get("turns", []) if t.get("final")]
            if state.get("state") == "error" or len(final) >= 3:
                break
            await asyncio.sleep(0.1)
        # The user's words: the Voxtral stage's idle-time transcripts go upstream as TranscriptionFrames,
        # reach the page as RTVI user-transcription and replace the "spoke for" note of a turn.
        for _ in range(300):  # at most 30 s more
            if await cdp.evaluate("window.voxtral.userText.length > 0"):
                break
            await asyncio.sleep(0.1)
        said = await cdp.evaluate("window.voxtral.userText")
        bubbles = await cdp.evaluate("[...document.querySelectorAll('.msg.user')].map(e => e.textContent)")
        await asyncio.sleep(0.5)  # let the last words paint
        shot = await cdp.send("Page.captureScreenshot", format="png")
        marked = await cdp.evaluate("document.querySelectorAll('.msg.bot.interrupted').length")
        errors = cdp.console_errors()
    png = tmp_path / "browser.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("VOXTRAL_SCREENSHOT_DIR"):
        shutil.copy(png, Path(os.environ["VOXTRAL_SCREENSHOT_DIR"]) / "browser.png")

    print(f"screenshot: {png}")
    assert png.stat().st_size > 10_000
    assert not errors, errors
    assert state.get("state") == "connected", state
    assert state["events"] > 0 and state["botText"], state
    final = [t for t in state["turns"] if t.get("final")]
    assert len(final) >= 3, state["turns"]
    assert all(t.get("voice_to_voice_ms") is not None for t in final if not t["interrupted"]), final
    # "(interrupted)" only where the bot really was cut off (the metrics stage knows).
    assert marked == state["interrupted"] == sum(t["interrupted"] for t in final), (marked, final)
    assert state["rtvi"].get("bot-ready") == 1, state["rtvi"]
    assert said and any(b.endswith(t) for b in bubbles for t in said), (said, bubbles)
