"""Test speech made with espeak-ng: real voiced audio for the VAD, Smart Turn and the pipeline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from voxtral_pipeline.audio import resample

try:  # the tests' skip marker; benchmarks import this module without pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

ESPEAK = shutil.which("espeak-ng")

needs_espeak = (
    pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (make test installs it)")
    if pytest is not None
    else (lambda f: f)
)


class SpeechUnavailableError(RuntimeError):
    """No speech engine to make test speech with."""


def _no_espeak():
    if "pytest" in sys.modules and pytest is not None:
        pytest.skip("espeak-ng is not installed")
    raise SpeechUnavailableError("espeak-ng is not installed: apt-get install espeak-ng")


def speak(text: str, rate: int = 16000, wpm: int = 160, voice: str | None = None) -> np.ndarray:
    """One phrase as mono float32 at ``rate`` (``voice``: an espeak-ng voice such as ``en-gb``)."""
    if ESPEAK is None:
        _no_espeak()
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "s.wav"
        cmd = [ESPEAK, "-s", str(wpm), "-w", str(wav)]
        if voice:
            cmd += ["-v", voice]
        subprocess.run([*cmd, text], check=True, capture_output=True)
        data, sr = sf.read(str(wav), dtype="float32")
    return resample(data, sr, rate)


def conversation(
    phrases: list[str], gap_secs: float = 4.0, lead_secs: float = 0.5, rate: int = 16000
) -> np.ndarray:
    """Phrases separated by silence, with silence before the first one."""
    parts = [np.zeros(int(lead_secs * rate), np.float32)]
    for i, phrase in enumerate(phrases):
        parts.append(speak(phrase, rate))
        if i < len(phrases) - 1:
            parts.append(np.zeros(int(gap_secs * rate), np.float32))
    return np.concatenate(parts)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), samples, rate, subtype=subtype)
    return path
