"""Kokoro TTS stage: speaks each chunk the word chunker sends, as soon as it is synthesized.

pipecat's own ``KokoroTTSService`` runs kokoro-onnx and downloads its files in ``__init__``;
this one runs Kokoro-82M on the PyTorch ``kokoro`` package (``KModel`` on CUDA when present, else
CPU) or on ONNX Runtime (for CPU-only hosts; see ``models/kokoro_onnx.py``), always with misaki's
offline G2P; it loads in ``setup()`` off the event loop and warms up before the first turn. It
works in TOKEN mode: the chunker upstream decides the chunks and each ``AggregatedTextFrame``
becomes one synthesis.

Every Kokoro call pads its audio with ~0.25 s of leading and ~0.6 s of trailing silence; that is
trimmed per chunk, so the first frame out is already audible, and a short pause of our own follows
a chunk that ends a clause or a sentence (none after a chunk cut mid-phrase), so chunks join as
one utterance. On an interruption no further audio is pushed and no queued chunk is synthesized;
only a model call already running finishes (a forward pass cannot be stopped) and is discarded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, InterruptionFrame, StartFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.utils.tracing.service_decorators import traced_tts

from voxtral_pipeline.audio import float_to_pcm16, resample
from voxtral_pipeline.config import KokoroConfig
from voxtral_pipeline.frames import SynthesisSpeedFrame
from voxtral_pipeline.models.kokoro import KokoroBundle, load_kokoro
from voxtral_pipeline.processors.chunker import boundary

FRAME_MS = 20
# Margins kept around the audible part so onsets (plosives, breaths) and decays are not clipped.
LEAD_MARGIN_MS = 10.0
TAIL_MARGIN_MS = 15.0
# Loudness is measured per window of this length (peak), not per sample, so one click or a lone
# noisy sample in the padding does not stop the trim.
TRIM_WINDOW_MS = 5.0

T = TypeVar("T")


def trim_silence(
    samples: np.ndarray,
    sample_rate: int,
    top_db: float,
    lead_margin_ms: float = LEAD_MARGIN_MS,
    tail_margin_ms: float = TAIL_MARGIN_MS,
) -> np.ndarray:
    """Cut leading and trailing audio quieter than ``top_db`` below the chunk's peak.

    Returns an empty array if the chunk is silent throughout.
    """
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1))
    if x.size == 0:
        return x
    window = max(1, int(sample_rate * TRIM_WINDOW_MS / 1000))
    n_windows = -(-x.size // window)
    padded = np.zeros(n_windows * window, dtype=np.float32)
    padded[: x.size] = np.abs(x)
    envelope = padded.reshape(n_windows, window).max(axis=1)
    peak = float(envelope.max())
    if peak <= 0.0:
        return x[:0]
    loud = np.flatnonzero(envelope >= peak * 10.0 ** (-top_db / 20.0))
    start = max(0, int(loud[0]) * window - int(sample_rate * lead_margin_ms / 1000))
    end = min(x.size, (int(loud[-1]) + 1) * window + int(sample_rate * tail_margin_ms / 1000))
    return x[start:end]


class KokoroTTSService(TTSService):
    """Kokoro-82M text to speech on torch, loaded in ``setup()``, one synthesis per chunk.

    Synthesis runs on one dedicated worker thread, so chunks never compete for the CPU/GPU and
    an interrupted chunk still in flight just delays the next one instead of racing it.
    """

    def __init__(self, config: KokoroConfig, *, bundle: KokoroBundle | None = None, **kwargs):
        """Initialize the service.

        Args:
            config: Model, voice, speed, language, device and trim threshold.
            bundle: An already loaded model (tests, benchmarks, several services sharing one);
                when None the model is loaded in ``setup()``.
            **kwargs: Passed to ``TTSService`` (e.g. ``sample_rate``; ``text_aggregation_mode``
                defaults to TOKEN, since the chunker upstream decides what is spoken together).
        """
        kwargs.setdefault("text_aggregation_mode", TextAggregationMode.TOKEN)
        kwargs.setdefault("settings", TTSSettings(model=config.model, voice=config.voice, language=None))
        # A chunk with nothing to say ("...") is no sign of a broken local model, unlike a silent
        # cloud provider: never write the service off for silent chunks.
        kwargs.setdefault("max_consecutive_zero_audio_contexts", 0)
        # pipecat closes a turn's audio context after 3 s without audio; one long chunk on a slow
        # CPU takes longer than that to synthesize, and the turn would be "stopped" mid-reply.
        # Our contexts are closed explicitly at the end of each reply, so this is only a safety net.
        kwargs.setdefault("stop_frame_timeout_s", 10.0)
        super().__init__(push_start_frame=True, push_stop_frames=True, **kwargs)
        self._config = config
        self._bundle = bundle
        self._executor: ThreadPoolExecutor | None = None
        # Bumped by every interruption: work started before it is dropped, never pushed.
        self._epoch = 0
        # Seconds of synthesis per second of speech, last measured (sent upstream to the chunker).
        self._rtf: float | None = None

    @property
    def bundle(self) -> KokoroBundle | None:
        """The loaded model, or None before ``setup()``."""
        return self._bundle

    def can_generate_metrics(self) -> bool:
        """TTFB, processing and usage metrics are reported."""
        return True

    async def setup(self, setup: FrameProcessorSetup):
        """Load the model (unless given) and warm it up, off the event loop.

        Raises:
            ModelUnavailableError: unchanged, so the CLI can print its one sentence.
        """
        await super().setup(setup)
        if self._bundle is None:
            c = self._config
            self._bundle = await asyncio.to_thread(
                load_kokoro, c.model, c.voice, c.device, c.lang_code, voices_file=c.voices_file
            )
        started = time.perf_counter()
        await self._run(self._bundle.warm_up, speed=self._config.speed)
        self._rtf = self._bundle.rtf  # timed at warm-up: the chunker's first estimate of our speed
        logger.debug(
            f"{self}: ready ({self._bundle.spec}, warm-up {time.perf_counter() - started:.2f} s, "
            f"real-time factor {self._rtf})"
        )

    async def start(self, frame: StartFrame):
        """Start, then tell the chunker upstream how fast synthesis is."""
        await super().start(frame)
        if self._rtf is not None:
            await self.push_frame(SynthesisSpeedFrame(rtf=self._rtf), FrameDirection.UPSTREAM)

    async def cleanup(self):
        """Release the synthesis thread."""
        await super().cleanup()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Mark work in flight as stale on an interruption, then let the base class drop it."""
        if isinstance(frame, InterruptionFrame):
            self._epoch += 1
        await super().process_frame(frame, direction)

    def pause_after(self, text: str) -> float:
        """Seconds of silence to follow a chunk: a clause or sentence pause, or none mid-phrase."""
        kind = boundary(text)
        if kind == "sentence":
            return self._config.sentence_pause_ms / 1000.0
        if kind == "clause":
            return self._config.clause_pause_ms / 1000.0
        return 0.0

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize one chunk and yield it as 20 ms frames at the pipeline's output rate.

        Each of the chunk's segments (Kokoro cuts at 510 phonemes) is pushed as soon as it is
        ready; the chunk's pause is appended to its last segment. A failure is reported as a
        non-fatal ``ErrorFrame`` naming the chunk; the next chunk is still spoken. Text with
        nothing to pronounce yields no audio.
        """
        bundle = self._bundle
        if bundle is None:
            yield ErrorFrame(error=f"{self}: Kokoro is not loaded, cannot speak [{text}]")
            return
        epoch = self._epoch
        await self.start_tts_usage_metrics(text)
        try:
            segments = await self._run(bundle.phonemize, text)
            for i, phonemes in enumerate(segments):
                if epoch != self._epoch:
                    return
                pause = self.pause_after(text) if i == len(segments) - 1 else 0.0
                pcm = await self._run(self._render, bundle, phonemes, pause, epoch)
                if epoch != self._epoch:
                    return  # interrupted while the model ran: its audio is never pushed
                if self._rtf is not None:
                    await self.push_frame(SynthesisSpeedFrame(rtf=self._rtf), FrameDirection.UPSTREAM)
                first = True
                for frame in self._frames(pcm, context_id):
                    if first:
                        # Trimmed, so the first frame is audible: this is the real TTFB.
                        await self.stop_ttfb_metrics()
                        first = False
                    yield frame
        except Exception as e:
            # pipecat logs the ErrorFrame itself; the full traceback is kept for debugging.
            logger.opt(exception=e).debug(f"{self}: synthesis failed for [{text}]")
            yield ErrorFrame(error=f"{self}: Kokoro could not speak [{text}]: {e}", exception=e)

    def _render(
        self, bundle: KokoroBundle, phonemes: str, pause_s: float = 0.0, epoch: int | None = None
    ) -> bytes:
        """Model forward, trim, pause, resample and 16-bit conversion, all on the synthesis thread.

        Work queued before an interruption (``epoch`` out of date) is skipped, not synthesized.
        """
        if epoch is not None and epoch != self._epoch:
            return b""
        audio = self._synthesize(bundle, phonemes)
        if audio.size and pause_s > 0:
            audio = np.concatenate([audio, np.zeros(int(round(pause_s * bundle.sample_rate)), np.float32)])
        audio = resample(audio, bundle.sample_rate, self.sample_rate)
        return float_to_pcm16(audio)

    def _synthesize(self, bundle: KokoroBundle, phonemes: str) -> np.ndarray:
        """Model forward and trim at the model's rate, timed for the real-time factor."""
        started = time.perf_counter()
        audio = trim_silence(
            bundle.infer(phonemes, self._config.speed), bundle.sample_rate, self._config.trim_db
        )
        if audio.size:
            self._rtf = (time.perf_counter() - started) / (audio.size / bundle.sample_rate)
        return audio

    def _frames(self, pcm: bytes, context_id: str) -> list[TTSAudioRawFrame]:
        """Cut PCM into 20 ms frames (the last one may be shorter)."""
        step = self.sample_rate * FRAME_MS // 1000 * 2
        return [
            TTSAudioRawFrame(pcm[i : i + step], self.sample_rate, 1, context_id=context_id)
            for i in range(0, len(pcm), step)
        ]

    async def tts_process_generator(self, context_id: str, generator: AsyncGenerator[Frame | None, None]):
        """Route a chunk's frames into its audio context, like the base class.

        The base class closes a turn's audio context at the end of the turn only if the turn's
        *last* chunk yielded audio; a last chunk with nothing to say ("...") would otherwise
        hold the TTSStoppedFrame back for ``stop_frame_timeout_s``. All our audio is yielded
        inline by ``run_tts``, so the context can always be closed right away.
        """
        await super().tts_process_generator(context_id, generator)
        self._is_yielding_frames_synchronously = True

    async def _run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run blocking work on the single synthesis thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kokoro-tts")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
