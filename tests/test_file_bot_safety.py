"""The file bot never harms a file, and Ctrl-C / SIGTERM stop it cleanly at any moment.

Paths are refused before any model loads (the CLI is run in-process with a model spec that would
fail to load, so a check that came too late would show as another error); signals are sent to a
real ``voxtral-pipeline run`` subprocess at several points of its start-up and run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxtral_pipeline.cli import main
from voxtral_pipeline.testing.speech import needs_espeak, speak, write_wav
from voxtral_pipeline.transports.file import OutputPathError, atomic_write, check_file_paths

DUMMY = ["--model", "dummy:tiny", "--tts-model", "dummy:tiny", "--set", "voxtral.max_new_tokens=8"]
#: Fail-safe only: a process that hangs fails the test here; no duration is asserted.
WAIT_S = 60


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(str(path), np.zeros(8000, np.float32), 16000)
    return path


@pytest.fixture
def no_run(monkeypatch):
    """Building the session fails the test: the path checks must come before anything loads."""
    import voxtral_pipeline.pipeline

    def too_late(*_a, **_k):
        raise AssertionError("the run got past the path checks")

    monkeypatch.setattr(voxtral_pipeline.pipeline, "build_transport", too_late)


def _cli_error(capsys, *args: str) -> tuple[int, str]:
    rc = main(["run", *args, *DUMMY])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--output", "--report"])
def test_an_output_equal_to_the_input_is_refused_and_the_input_kept(capsys, no_run, wav, flag):
    before = wav.read_bytes()
    rc, err = _cli_error(capsys, "--input", str(wav), flag, str(wav))
    assert rc == 2 and "same file as the --input" in err and "Traceback" not in err
    assert wav.read_bytes() == before


def test_same_file_by_another_path_or_a_hard_link_is_refused(tmp_path, wav):
    link = tmp_path / "link.wav"
    os.link(wav, link)
    with pytest.raises(OutputPathError, match="same file as the --input"):
        check_file_paths(wav, output=link)
    with pytest.raises(OutputPathError, match="same file as the --input"):
        check_file_paths(wav, report=tmp_path / "sub" / ".." / "in.wav")
    sym = tmp_path / "sym.wav"
    sym.symlink_to(wav)
    with pytest.raises(OutputPathError, match="same file as the --input"):
        check_file_paths(wav, output=sym)
    with pytest.raises(OutputPathError, match="--report .* same file as the --output"):
        check_file_paths(wav, output=tmp_path / "out.wav", report=tmp_path / "out.wav")
    check_file_paths(wav, output=tmp_path / "new" / "out.wav", report=tmp_path / "r.json")  # fine


@pytest.mark.parametrize(
    "target, message",
    [
        ("{tmp}", "is a directory"),
        ("/dev/null", "not a regular file"),
        ("/proc/self/report.json", "cannot write"),
        ("/proc/version", "cannot write"),
    ],
)
def test_unwritable_outputs_fail_before_any_model_loads(capsys, no_run, tmp_path, wav, target, message):
    target = target.format(tmp=tmp_path)
    for flag in ("--output", "--report"):
        rc, err = _cli_error(capsys, "--input", str(wav), flag, target)
        assert rc == 2 and message in err and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["in.wav"]  # no probe or temp file left


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --- signals --------------------------------------------------------------------------------


def _start(args: list[str]) -> tuple[subprocess.Popen, list[str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxtral_pipeline", "run", *args, *DUMMY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    return proc, lines


def _wait_for_line(proc: subprocess.Popen, lines: list[str], pattern: str) -> None:
    """Read stderr until ``pattern`` shows (fail-safe timeout), keeping every line."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if re.search(pattern, line):
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(WAIT_S) and any(re.search(pattern, ln) for ln in lines), "".join(lines)[-3000:]


def _speech_wav(tmp_path: Path) -> Path:
    rate = 16000
    one = speak("What is the capital of France? Tell me a little about it.", rate)
    pause = np.zeros(rate, np.float32)
    return write_wav(tmp_path / "talk.wav", np.concatenate([pause, one, pause, one, pause, one]), rate)


#: (what the process is doing when signalled, the stderr line that marks it, extra wait in s)
POINTS = {
    "config loaded, pipecat importing": (r"Pipecat \d", 0.0),
    "Voxtral loaded, Kokoro loading": (r"Voxtral dummy:tiny loaded", 0.0),
    "file playing": (r"playing .*talk\.wav", 1.5),
}


@needs_espeak
@pytest.mark.parametrize(
    "point, sig",
    [
        ("config loaded, pipecat importing", signal.SIGINT),
        ("Voxtral loaded, Kokoro loading", signal.SIGTERM),
        ("file playing", signal.SIGINT),
        ("file playing", signal.SIGTERM),
    ],
)
def test_a_signal_at_any_point_stops_the_run_and_keeps_what_was_heard(tmp_path, point, sig):
    wav = _speech_wav(tmp_path)
    out, report = tmp_path / "out.wav", tmp_path / "report.json"
    proc, lines = _start(["--input", str(wav), "--output", str(out), "--report", str(report)])
    try:
        pattern, extra = POINTS[point]
        _wait_for_line(proc, lines, pattern)
        if extra:
            threading.Event().wait(extra)
        proc.send_signal(sig)
        rc = proc.wait(WAIT_S)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers  # no temporary file left behind
    if point != "file playing":
        return  # nothing played yet: a run that never started may or may not write empty files
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["interrupted_by"] == signal.Signals(sig).name
    total = sf.info(str(wav)).duration
    assert 0 < data["input_secs_reached"] < total and abs(data["input_secs"] - total) < 0.01
    recording, rate = sf.read(str(out))
    assert recording.shape[1] == 2
    # The recording holds what was played, the file's speech included, not the whole input.
    assert 0 < len(recording) / rate < total
    assert np.abs(recording[:, 0]).max() > 0.05
    assert "interrupted" in err and "complete: false" in err


def test_a_finished_run_says_complete(tmp_path, wav):
    report = tmp_path / "report.json"
    proc, lines = _start(
        ["--input", str(wav), "--report", str(report), "--set", "transport.file.idle_secs=0.5"]
    )
    try:
        rc = proc.wait(WAIT_S * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, proc.stderr.read()[-2000:]
    data = json.loads(report.read_text())
    assert data["complete"] is True and "interrupted_by" not in data
    assert data["input_secs_reached"] == pytest.approx(data["input_secs"], abs=0.02)
