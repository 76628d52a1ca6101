"""The whole pipeline, offline on CPU with dummy models, driven by the file transport and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxtral_pipeline.testing.speech import ESPEAK, conversation, needs_espeak, write_wav

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you recommend a good book to read?",
]
DUMMY_ARGS = [
    "--model",
    "dummy:tiny",
    "--tts-model",
    "dummy:tiny",
    "--set",
    "voxtral.max_new_tokens=12",
    "--set",
    "voxtral.seed=0",
]
REPORT_TURN_KEYS = {
    "index",
    "user_start_s",
    "user_end_s",
    "reply_text",
    "interrupted",
    "ttft_ms",
    "first_audio_ms",
    "voice_to_voice_ms",
    "prompt_tokens",
    "prefill_tokens",
    "generate_calls",
}


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "voxtral_pipeline", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def three_questions(tmp_path_factory) -> Path:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("conv") / "three.wav"
    return write_wav(path, conversation(QUESTIONS, gap_secs=5.0), rate=16000)


@needs_espeak
def test_three_question_conversation(tmp_path, three_questions):
    out, report_path = tmp_path / "out.wav", tmp_path / "report.json"
    proc = _cli(
        "--input", str(three_questions), "--output", str(out), "--report", str(report_path), *DUMMY_ARGS
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    report = json.loads(report_path.read_text())
    turns = report["turns"]
    assert len(turns) == len(QUESTIONS), turns
    for turn in turns:
        assert REPORT_TURN_KEYS <= set(turn)
        assert turn["reply_text"], turn
        assert not turn["interrupted"]
        assert turn["generate_calls"] == 1 and 375 < turn["prefill_tokens"] <= turn["prompt_tokens"]
        # Ordered waterfall, all measured from the real end of user speech.
        assert 0 < turn["ttft_ms"] <= turn["first_audio_ms"] <= turn["voice_to_voice_ms"]
    summary = report["summary"]
    assert summary["turns"] == 3
    for key in ("ttft_ms", "first_audio_ms", "voice_to_voice_ms"):
        assert set(summary[key]) == {"p50", "p90", "p95"}
        assert summary[key]["p50"] is not None

    rec, rate = sf.read(str(out), dtype="float32")
    assert rec.ndim == 2 and rec.shape[1] == 2 and rate == 24000
    user, bot = rec[:, 0], rec[:, 1]
    for i, turn in enumerate(turns):
        # Bot audio follows each question: none while the user speaks, some before the next question.
        start = int((turn["user_end_s"] + turn["voice_to_voice_ms"] / 1000) * rate)
        end = int(turns[i + 1]["user_start_s"] * rate) if i + 1 < len(turns) else len(bot)
        during_question = bot[int(turn["user_start_s"] * rate) : int(turn["user_end_s"] * rate)]
        assert np.abs(during_question).max() == 0.0
        assert np.abs(bot[start:end]).max() > 0.0
    assert np.abs(user).max() > 0.1


def test_silent_wav_gives_zero_turns(tmp_path):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000 * 2, np.float32))
    report_path = tmp_path / "r.json"
    proc = _cli("--input", str(silent), "--report", str(report_path), *DUMMY_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no speech was heard" in proc.stdout
    assert json.loads(report_path.read_text())["summary"]["turns"] == 0


def _assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("voxtral-pipeline: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]


def test_missing_input_file(tmp_path):
    _assert_one_line_error(
        _cli("--input", str(tmp_path / "nope.wav"), *DUMMY_ARGS), 2, "input file not found"
    )


def test_input_not_audio(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    _assert_one_line_error(_cli("--input", str(bad), *DUMMY_ARGS), 2, "not a readable audio file")


def test_empty_wav(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    _assert_one_line_error(_cli("--input", str(empty), *DUMMY_ARGS), 2, "empty")


def test_invalid_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[voxtral]\ntemperature = 'hot'\n")
    _assert_one_line_error(_cli("--config", str(cfg), "--input", "x.wav"), 2, "voxtral.temperature")


def test_unknown_dummy_size(tmp_path):
    wav = write_wav(tmp_path / "s.wav", np.zeros(1600, np.float32))
    _assert_one_line_error(_cli("--input", str(wav), "--model", "dummy:huge"), 2, "dummy:tiny or dummy:full")


@needs_espeak
def test_uncached_hub_model_is_one_clear_sentence_and_no_session(tmp_path, three_questions):
    report = tmp_path / "r.json"
    proc = _cli(
        "--input",
        str(three_questions),
        "--report",
        str(report),
        "--model",
        "nobody/not-a-cached-model",
        "--tts-model",
        "dummy:tiny",
    )
    _assert_one_line_error(proc, 1, "not in the local HuggingFace cache")
    # The session never starts: no speech is streamed into a stage that has no model.
    assert "turn 0" not in proc.stderr and not report.exists()


@needs_espeak
def test_odd_rate_stereo_float_input_just_works(tmp_path):
    from voxtral_pipeline.testing.speech import speak

    voice = speak("What time is it?", rate=44100)
    pad = np.zeros(int(0.5 * 44100), np.float32)
    mono = np.concatenate([pad, voice, pad])
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    path = tmp_path / "odd.wav"
    sf.write(str(path), stereo, 44100, subtype="FLOAT")
    report_path = tmp_path / "r.json"
    proc = _cli("--input", str(path), "--report", str(report_path), *DUMMY_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["summary"]["turns"] == 1
    assert report["turns"][0]["voice_to_voice_ms"] is not None
