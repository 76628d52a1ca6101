"""`voxtral-pipeline run` serves the browser page (the default) or the WebSocket and prints the URL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from voxtral_pipeline.server import bind_warning

DUMMY = ["--model", "dummy:tiny", "--tts-model", "dummy:tiny", "--set", "voxtral.max_new_tokens=8"]


def _serve(*args: str, wait_for: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxtral_pipeline", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(wait_for, line)
        if match:
            return proc, match.group(1)
    proc.kill()
    pytest.fail(f"no URL printed; stderr: {proc.stderr.read()[-2000:]}")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_default_run_serves_the_browser_page():
    proc, url = _serve("--port", "0", *DUMMY, wait_for=r"open (http://127\.0\.0\.1:\d+/) in a browser")
    try:
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "Voxtral voice agent" in page and "app.js" in page
        assert b"/api/offer" in urllib.request.urlopen(url + "app.js", timeout=10).read()
        status = json.loads(urllib.request.urlopen(url + "status", timeout=10).read())
        assert status == {
            "status": "ready",
            "transport": "webrtc",
            "sessions": 0,
            "max_sessions": 4,
            "token_required": False,
        }
    finally:
        assert _stop(proc) == 0


def test_websocket_run_prints_the_ws_url():
    proc, url = _serve(
        "-t", "websocket", "--port", "0", "--token", "abc", *DUMMY, wait_for=r"WebSocket bot at (ws://\S+)"
    )
    try:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/ws", url)
        status = json.loads(urllib.request.urlopen(url.replace("ws://", "http://")[:-3] + "/status").read())
        assert status["transport"] == "websocket" and status["token_required"] is True
    finally:
        proc.send_signal(signal.SIGTERM)  # docker stop / systemd: a clean exit too
        assert proc.wait(30) == 0
        assert "voxtral-pipeline: stopped" in proc.stderr.read()


def test_public_bind_warns():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert bind_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        assert "reachable from other machines" in bind_warning(host)


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: these errors must come before any model loads."""
    import voxtral_pipeline.cli

    def too_late(_config):
        raise AssertionError("models loaded before the error")

    monkeypatch.setattr(voxtral_pipeline.cli, "_load_models", too_late)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "256.1.1.1"], "not a valid IP address"),
        (["--host", "bad host!"], "not an IP address or host name"),
        (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid"),
        (["--token", ""], "empty token"),
        (["--token", "  "], "empty token"),
        (["-t", "websocket", "--set", "transport.websocket.path=ws"], "transport.websocket.path"),
        (["--input", "x.wav", "--set", "transport.file.reply_timeout_secs=inf"], "reply_timeout_secs"),
    ],
)
def test_bad_server_settings_fail_before_models_load(capsys, no_models, args, message):
    from voxtral_pipeline.cli import main

    rc = main(["run", "--port", "0", *args, *DUMMY])
    err = capsys.readouterr().err
    assert rc in (1, 2) and message in err and "Traceback" not in err, err


def test_a_config_file_that_is_not_utf8_is_named(capsys, tmp_path, no_models):
    from voxtral_pipeline.cli import main

    path = tmp_path / "bot.toml"
    path.write_bytes(b'[voxtral]\nmodel = "caf\xe9"\n')
    rc = main(["run", "--config", str(path), *DUMMY])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "not UTF-8" in err and "Traceback" not in err
