"""Small audio helpers shared by stages and transports (PCM <-> float, resampling, WAV bytes)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """16-bit little-endian PCM to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples to 16-bit PCM, clipping out-of-range values and zeroing NaN/inf."""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality one-shot resampling of a mono float32 signal."""
    if from_rate == to_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), from_rate, to_rate).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono float samples as a 16-bit WAV file in memory."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
