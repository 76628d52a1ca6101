"""The Kokoro TTS stage under pipecat's own test harness, with the dummy:tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test
from pipecat.utils.text.base_text_aggregator import TextType

from voxtral_pipeline.audio import pcm16_to_float
from voxtral_pipeline.config import KokoroConfig
from voxtral_pipeline.models.kokoro import KokoroBundle
from voxtral_pipeline.processors.kokoro import KokoroTTSService, trim_silence

pytest_plugins = ["tests.kokoro_fixtures"]  # fixtures: kokoro_tiny

CONFIG = KokoroConfig(model="dummy:tiny", device="cpu")


async def _speak(service: KokoroTTSService, texts: list[str], rate: int = 24000, **params):
    """One bot reply, framed as the Voxtral stage and the chunker frame it."""
    frames = [
        LLMFullResponseStartFrame(),
        *[AggregatedTextFrame(t, TextType.SENTENCE) for t in texts],
        LLMFullResponseEndFrame(),
    ]
    return await run_test(
        service,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_out_sample_rate=rate, **params),
        start_timeout=120.0,  # counted after setup(), which may load and warm up the model
    )


def _audio(frames) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def _samples(frames) -> np.ndarray:
    return pcm16_to_float(b"".join(f.audio for f in _audio(frames)))


#
# trim_silence
#


def _tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_trim_silence_cuts_edges_and_keeps_a_margin():
    rate = 24000
    tone = _tone(0.5)
    x = np.concatenate([np.zeros(int(0.25 * rate)), 1e-4 * np.ones(100), tone, np.zeros(int(0.6 * rate))])
    y = trim_silence(x, rate, top_db=40.0)
    assert tone.size <= y.size <= tone.size + int(0.05 * rate)  # the tone and a few ms around it
    assert np.abs(y[: int(0.015 * rate)]).max() > 0.1  # onset within the lead margin
    assert np.abs(y[-int(0.025 * rate) :]).max() > 0.1


def test_trim_silence_edge_cases():
    assert trim_silence(np.zeros(2400), 24000, 40.0).size == 0
    assert trim_silence(np.zeros(0), 24000, 40.0).size == 0
    x = _tone(0.1)
    x[0] = np.nan
    assert np.isfinite(trim_silence(x, 24000, 40.0)).all()
    assert trim_silence(_tone(0.1), 24000, 40.0).size == _tone(0.1).size  # nothing to cut


#
# The service
#


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_speaks_a_chunk_in_20ms_frames(kokoro_tiny, rate):
    service = KokoroTTSService(CONFIG, bundle=kokoro_tiny)
    down, up = await _speak(service, ["Hello there."], rate=rate, enable_metrics=True)

    kinds = [type(f) for f in down]
    assert TTSStartedFrame in kinds and TTSStoppedFrame in kinds
    audio = _audio(down)
    assert audio
    first_audio = down.index(audio[0])
    assert kinds.index(TTSStartedFrame) < first_audio < kinds.index(TTSStoppedFrame)
    assert all(f.sample_rate == rate and f.num_channels == 1 for f in audio)
    frame_bytes = rate * 20 // 1000 * 2
    assert all(len(f.audio) == frame_bytes for f in audio[:-1])
    assert 0 < len(audio[-1].audio) <= frame_bytes
    seconds = sum(len(f.audio) for f in audio) / 2 / rate
    assert 0.3 < seconds < 3.0  # ~12 phonemes at ~3 frames each, edges trimmed
    assert not [f for f in up if isinstance(f, ErrorFrame)]

    ttfb = [d for f in down if isinstance(f, MetricsFrame) for d in f.data if isinstance(d, TTFBMetricsData)]
    # the worker's initial metrics frame carries zeros; the service's own report follows it
    assert [d.value for d in ttfb if d.model == "dummy:tiny" and d.value > 0]


class _PaddedBundle(KokoroBundle):
    """Pads every model output with Kokoro-like edge silence (a random model has none)."""

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        audio = super().infer(phonemes, speed)
        self.raw_sizes.append(audio.size)
        lead, trail = np.zeros(6000, np.float32), np.zeros(14400, np.float32)  # 0.25 s, 0.6 s
        return np.concatenate([lead, audio, trail])


def _copy(bundle: KokoroBundle, cls: type[KokoroBundle]) -> KokoroBundle:
    copy = cls(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})
    copy.raw_sizes = []
    return copy


async def test_edge_silence_is_trimmed(kokoro_tiny):
    bundle = _copy(kokoro_tiny, _PaddedBundle)
    down, _ = await _speak(KokoroTTSService(CONFIG, bundle=bundle), ["Hello there."])
    samples = _samples(down)
    (raw,) = bundle.raw_sizes
    assert samples.size <= raw + int(0.05 * 24000)  # the 0.85 s of padding is gone
    peak = np.abs(samples).max()
    frame = 480  # 20 ms at 24 kHz
    assert np.abs(samples[:frame]).max() > 0.01 * peak  # first frame audible
    assert np.abs(samples[-frame:]).max() > 0.01 * peak  # last frame audible


class _FailOnceBundle(KokoroBundle):
    """The first model call raises, later ones work."""

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        self.raw_sizes.append(len(phonemes))
        if len(self.raw_sizes) == 1:
            raise RuntimeError("synthetic failure")
        return super().infer(phonemes, speed)


async def test_failed_chunk_reports_error_and_next_chunk_is_spoken(kokoro_tiny):
    bundle = _copy(kokoro_tiny, _FailOnceBundle)
    down, up = await _speak(KokoroTTSService(CONFIG, bundle=bundle), ["First chunk,", " then the second."])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1
    assert "First chunk," in errors[0].error and "synthetic failure" in errors[0].error
    assert not errors[0].fatal
    assert len(bundle.raw_sizes) == 2
    assert _audio(down)  # the second chunk was spoken
    assert TTSStoppedFrame in [type(f) for f in down]


async def test_text_with_nothing_to_say_gives_no_audio(kokoro_tiny):
    down, up = await _speak(KokoroTTSService(CONFIG, bundle=kokoro_tiny), ["..."])
    assert not _audio(down)
    # pipecat itself reports a context that ended silent; nothing may report a synthesis failure
    assert not [f for f in up if isinstance(f, ErrorFrame) and "could not speak" in f.error]


async def test_reply_ending_in_a_silent_chunk_is_closed_at_its_end(kokoro_tiny):
    """The turn's audio context is closed when the reply ends, not after pipecat's idle timeout."""
    service = KokoroTTSService(CONFIG, bundle=kokoro_tiny)
    closed: list[str | None] = []
    remove_audio_context = service.remove_audio_context

    async def spy(context_id):
        closed.append(context_id)
        await remove_audio_context(context_id)

    service.remove_audio_context = spy
    down, _ = await _speak(service, ["Right.", " ..."])
    kinds = [type(f) for f in down]
    audio = _audio(down)
    assert audio and TTSStoppedFrame in kinds
    assert kinds.index(TTSStoppedFrame) < kinds.index(LLMFullResponseEndFrame)
    assert audio[0].context_id in closed


async def test_several_chunks_in_order(kokoro_tiny):
    bundle = _copy(kokoro_tiny, _PaddedBundle)
    down, _ = await _speak(KokoroTTSService(CONFIG, bundle=bundle), ["Sure,", " I can help", " with that."])
    assert len(bundle.raw_sizes) == 3
    assert [type(f) for f in down].count(TTSStartedFrame) >= 1
    # all chunks' trimmed audio arrived, nothing of the padding
    assert _samples(down).size <= sum(bundle.raw_sizes) + 3 * int(0.05 * 24000)
    assert _samples(down).size >= 0.8 * sum(bundle.raw_sizes)


async def test_setup_loads_and_warms_up_the_model(kokoro_tiny):
    """Without a bundle the service loads dummy:tiny itself (from the dummy cache) in setup()."""
    service = KokoroTTSService(CONFIG)
    assert service.bundle is None and service.can_generate_metrics()
    down, _ = await _speak(service, ["Hi!"])
    assert service.bundle is not None and service.bundle is not kokoro_tiny
    assert service.bundle.warmed_up
    assert _audio(down)
