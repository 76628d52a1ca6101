"""The Kokoro TTS stage under pipecat's own test harness, with the dummy:tiny model."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.metrics.metrics import TTFAMetricsData, TTFBMetricsData, TTSUsageMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.base_text_aggregator import TextType

from voxtral_pipeline.audio import float_to_pcm16, pcm16_to_float, resample
from voxtral_pipeline.config import KokoroConfig
from voxtral_pipeline.frames import SynthesisSpeedFrame
from voxtral_pipeline.models.kokoro import KokoroBundle
from voxtral_pipeline.processors.kokoro import KokoroTTSService, trim_silence

pytest_plugins = ["tests.kokoro_fixtures"]  # fixtures: kokoro_tiny

CONFIG = KokoroConfig(model="dummy:tiny", device="cpu")
NO_PAUSE = KokoroConfig(model="dummy:tiny", device="cpu", clause_pause_ms=0, sentence_pause_ms=0)


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
    down, up = await _speak(
        service, ["Hello there."], rate=rate, enable_metrics=True, enable_usage_metrics=True
    )

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
    # the chunker upstream is told how fast synthesis is (at start, and after the chunk)
    speeds = [f.rtf for f in up if isinstance(f, SynthesisSpeedFrame)]
    assert len(speeds) == 2 and all(r > 0 for r in speeds)

    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    ttfb = [d for d in metrics if isinstance(d, TTFBMetricsData)]
    # the worker's initial metrics frame carries zeros; the service's own report follows it
    assert [d.value for d in ttfb if d.model == "dummy:tiny" and d.value > 0]
    # time to first *audible* sample: the edges are trimmed, so it is TTFB plus a few ms at most
    (ttfa,) = [d for d in metrics if isinstance(d, TTFAMetricsData)]
    assert ttfa.ttfa >= ttfa.ttfb > 0 and ttfa.leading_silence < 0.05
    # usage: the characters spoken this turn
    assert [d.value for d in metrics if isinstance(d, TTSUsageMetricsData)] == [len("Hello there.")]


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
    down, _ = await _speak(KokoroTTSService(NO_PAUSE, bundle=bundle), ["Hello there."])
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
    down, _ = await _speak(KokoroTTSService(NO_PAUSE, bundle=bundle), ["Sure,", " I can help", " with that."])
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


#
# Pauses, interruption, resampling
#


class _ToneBundle(KokoroBundle):
    """Every chunk is 0.3 s of tone inside Kokoro-like edge silence (no model call)."""

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        self.raw_sizes.append(len(phonemes))
        return np.concatenate([np.zeros(6000, np.float32), _tone(0.3), np.zeros(14400, np.float32)])


def _silent_runs(x: np.ndarray, rate: int = 24000) -> list[float]:
    """Lengths (s) of the runs of exact silence inside ``x``."""
    quiet = np.concatenate([[False], x == 0, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(int)))
    return [(b - a) / rate for a, b in zip(edges[::2], edges[1::2], strict=True)]


async def test_pauses_follow_clause_and_sentence_chunks_only(kokoro_tiny):
    bundle = _copy(kokoro_tiny, _ToneBundle)
    config = KokoroConfig(model="dummy:tiny", clause_pause_ms=100, sentence_pause_ms=250)
    down, _ = await _speak(KokoroTTSService(config, bundle=bundle), ["Sure,", " I can help", " with that."])
    samples = _samples(down)
    margins = (0.010 + 0.015) * 3  # trim margins kept around each chunk's audible part
    assert samples.size / 24000 == pytest.approx(3 * 0.3 + margins + 0.1 + 0.25, abs=0.02)
    gaps = [g for g in _silent_runs(samples) if g > 0.05]
    # after "Sure," a clause pause; after "I can help" (mid-phrase) only the trim margins;
    # after "with that." the sentence pause ends the audio
    assert len(gaps) == 2
    assert gaps[0] == pytest.approx(0.1 + 0.025, abs=0.01)
    assert gaps[1] == pytest.approx(0.25 + 0.015, abs=0.01)


class _SlowBundle(KokoroBundle):
    """Each model call takes 0.4 s of wall-clock time (like a big model on a slow CPU)."""

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        self.raw_sizes.append(phonemes)
        time.sleep(0.4)
        return np.concatenate([np.zeros(2400, np.float32), _tone(0.2), np.zeros(2400, np.float32)])


async def test_interruption_stops_queued_synthesis_and_pushes_no_more_audio(kokoro_tiny):
    bundle = _copy(kokoro_tiny, _SlowBundle)
    service = KokoroTTSService(CONFIG, bundle=bundle)
    chunks = ["One two,", " three four,", " five six,", " seven eight,", " nine ten."]
    frames = [
        LLMFullResponseStartFrame(),
        *[AggregatedTextFrame(t, TextType.SENTENCE) for t in chunks],
        SleepFrame(sleep=0.2),
        InterruptionFrame(),
        SleepFrame(sleep=0.6),  # the call in flight finishes meanwhile; its audio is dropped
        LLMFullResponseStartFrame(),
        AggregatedTextFrame("Yes?", TextType.SENTENCE),
        LLMFullResponseEndFrame(),
    ]
    threads_before = threading.active_count()
    down, _ = await run_test(service, frames_to_send=frames, start_timeout=120.0)
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    after = _audio(down[cut:])
    assert after, "the reply after the interruption is spoken"
    assert len({f.context_id for f in after}) == 1  # only the new reply's audio
    assert all(f.context_id not in {g.context_id for g in _audio(down[:cut])} for f in after)
    # the queued chunks were never synthesized: at most the one in flight, plus "Yes?"
    assert len(bundle.raw_sizes) <= 3 < len(chunks) + 1
    assert threading.active_count() <= threads_before + 1


def test_resample_keeps_duration_and_pitch():
    tone = _tone(1.0)  # 220 Hz at 24 kHz
    for rate in (16000, 8000, 48000):
        y = resample(tone, 24000, rate)
        assert y.dtype == np.float32 and abs(y.size - rate) <= 2
        spectrum = np.abs(np.fft.rfft(y))
        assert np.argmax(spectrum) * rate / y.size == pytest.approx(220, abs=2)
        assert np.abs(y).max() == pytest.approx(0.5, abs=0.02)
    assert resample(tone, 24000, 24000) is not None and np.array_equal(resample(tone, 24000, 24000), tone)
    assert resample(np.zeros(0, np.float32), 24000, 16000).size == 0


def test_pcm16_conversion_round_trip_and_clipping():
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0, np.nan], np.float32)
    y = pcm16_to_float(float_to_pcm16(x))
    assert y[:3] == pytest.approx([0.0, 0.5, -0.5], abs=1e-4)
    assert y[3] == pytest.approx(1.0, abs=1e-4) and y[4] == -1.0 and y[5] == 0.0
