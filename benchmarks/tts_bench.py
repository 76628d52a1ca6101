"""Chunking policies in front of Kokoro: time to first audible sample, playback gaps, chunk sizes.

A recorded reply is replayed as an LLM token stream (one word every 25 ms by default) through a
real pipecat pipeline, ``WordChunker(policy) -> KokoroTTSService -> recorder``, for every chunking
policy, plus pipecat's own baseline: the same ``KokoroTTSService`` in
``TextAggregationMode.SENTENCE`` (pipecat's ``SimpleTextAggregator``) fed the tokens directly.
The audio that comes out is then played back in simulated real time from its first frame on:

- ``ttfa_ms``: first token -> first audible sample (pipecat's speech-onset detector on the output);
- ``chunk_to_audio_ms``: first chunk handed to the TTS -> first audible sample (the TTS's own share);
- ``gaps_ms`` / ``n_gaps``: total playback underrun after the first sample (the listener hears
  silence that was not meant to be there: audio not ready when the previous audio ran out);
- chunk sizes in words: first chunk, mean, max, count.

    python benchmarks/tts_bench.py                      # dummy:full on this machine's device
    python benchmarks/tts_bench.py --tts dummy:tiny --repeats 1
    python benchmarks/tts_bench.py --tts pypi:kokoro-v1.0-int8 --voice jf_alpha   # real int8 on ORT

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.audio.utils import detect_speech_onset
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TextAggregationMode
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import ChunkerConfig, KokoroConfig  # noqa: E402
from voxtral_pipeline.machine import machine_info  # noqa: E402
from voxtral_pipeline.models.kokoro import KokoroBundle, load_kokoro  # noqa: E402
from voxtral_pipeline.processors.chunker import WordChunker  # noqa: E402
from voxtral_pipeline.processors.kokoro import KokoroTTSService  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT_RATE = 24000
# A typical spoken answer: a short opener, clauses, a number, a currency amount, an abbreviation.
REPLY = (
    "Sure, I can help with that. The capital of France is Paris, which has been the country's "
    "political and cultural center for centuries. About 2.1 million people live in the city "
    "itself, and a ticket to the top of the Eiffel Tower costs around $35.50 for adults, e.g. "
    "if you book online. Would you like a few tips for your first visit?"
)
POLICIES = ["adaptive", "clause", "sentence", "words", "pipecat-sentence"]


@dataclass
class Run:
    policy: str
    token_times: list[float] = field(default_factory=list)
    requests: list[tuple[float, str]] = field(default_factory=list)  # (time, text) per TTS call
    audio: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival time, pcm)


class Recorder(FrameProcessor):
    def __init__(self, run: Run, **kwargs):
        super().__init__(**kwargs)
        self._run = run

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self._run.audio.append((time.perf_counter(), frame.audio))
        await self.push_frame(frame, direction)


def tokens_of(text: str) -> list[str]:
    """The reply as an LLM would stream it: one word per token, each with its leading space."""
    return [" " + w for w in text.split()]


async def replay(policy: str, bundle: KokoroBundle, kokoro: KokoroConfig, interval: float) -> Run:
    run = Run(policy)
    if policy == "pipecat-sentence":
        tts = KokoroTTSService(kokoro, bundle=bundle, text_aggregation_mode=TextAggregationMode.SENTENCE)
        stages: list[FrameProcessor] = [tts]
    else:
        tts = KokoroTTSService(kokoro, bundle=bundle)
        stages = [WordChunker(ChunkerConfig(policy=policy)), tts]

    @tts.event_handler("on_tts_request")
    async def _on_request(_tts, _context_id, text):
        run.requests.append((time.perf_counter(), text))

    pipeline = Pipeline([*stages, Recorder(run)])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_out_sample_rate=OUT_RATE, enable_metrics=True),
        enable_rtvi=False,
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker, _frame):
        started.set()

    async def feed():
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(0.2)
        await worker.queue_frame(LLMFullResponseStartFrame())
        t0 = time.perf_counter()
        for i, token in enumerate(tokens_of(REPLY)):
            # An absolute schedule, so a late token does not delay all the later ones.
            await asyncio.sleep(max(0.0, t0 + i * interval - time.perf_counter()))
            run.token_times.append(time.perf_counter())
            await worker.queue_frame(LLMTextFrame(token))
        await worker.queue_frame(LLMFullResponseEndFrame())
        # Let synthesis finish, then end.
        words = len(REPLY.split())
        deadline = time.perf_counter() + 30 + words * 2
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.25)
            done = run.audio and time.perf_counter() - run.audio[-1][0] > 1.5 and len(run.requests) > 0
            if done and not tts.get_audio_contexts():
                break
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), feed())
    return run


def analyse(run: Run) -> dict[str, Any]:
    """Simulated real-time playback of what came out, from its first frame on."""
    first_token = run.token_times[0]
    pcm = b"".join(a for _, a in run.audio)
    if not run.audio:
        return {"policy": run.policy, "error": "no audio"}
    onset = detect_speech_onset(pcm, OUT_RATE) or 0
    play_end = None
    gaps, n_gaps = 0.0, 0
    for arrival, audio in run.audio:
        seconds = len(audio) / 2 / OUT_RATE
        if play_end is None:
            play_end = arrival + seconds
            continue
        if arrival > play_end + 1e-4:
            gaps += arrival - play_end
            n_gaps += 1
            play_end = arrival
        play_end += seconds
    first_audible = run.audio[0][0] + onset / OUT_RATE
    sizes = [len(t.split()) for _, t in run.requests]
    return {
        "policy": run.policy,
        "ttfa_ms": round((first_audible - first_token) * 1000, 1),
        "chunk_to_audio_ms": round((first_audible - run.requests[0][0]) * 1000, 1),
        "gaps_ms": round(gaps * 1000, 1),
        "n_gaps": n_gaps,
        "audio_s": round(len(pcm) / 2 / OUT_RATE, 2),
        "total_ms": round((play_end - first_token) * 1000, 1),
        "chunks": len(sizes),
        "first_chunk_words": sizes[0],
        "mean_chunk_words": round(statistics.mean(sizes), 1),
        "max_chunk_words": max(sizes),
        "chunk_texts": [t for _, t in run.requests],
    }


def machine(bundle: KokoroBundle) -> dict[str, Any]:
    import onnxruntime

    return machine_info(onnxruntime=onnxruntime.__version__, device=bundle.device)


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in ("ttfa_ms", "chunk_to_audio_ms", "gaps_ms", "n_gaps", "total_ms"):
        out[key] = round(statistics.median(r[key] for r in rows), 1)
    out["runs"] = [{k: r[k] for k in ("ttfa_ms", "chunk_to_audio_ms", "gaps_ms", "n_gaps")} for r in rows]
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<17} {'TTFA ms':>8} {'chunk->audio':>12} {'gaps ms':>8} {'#gaps':>6} "
        f"{'chunks':>6} {'1st':>4} {'mean':>5} {'max':>4} {'total ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['policy']:<17} {r['ttfa_ms']:>8.0f} {r['chunk_to_audio_ms']:>12.0f} {r['gaps_ms']:>8.0f} "
            f"{r['n_gaps']:>6.0f} {r['chunks']:>6} {r['first_chunk_words']:>4} {r['mean_chunk_words']:>5} "
            f"{r['max_chunk_words']:>4} {r['total_ms']:>9.0f}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    kokoro = KokoroConfig(model=args.tts, voice=args.voice, device=args.device)
    started = time.perf_counter()
    bundle = load_kokoro(args.tts, args.voice, args.device, voices_file=args.voices_file)
    load_s = time.perf_counter() - started
    bundle.warm_up()
    # A second warm-up of a first-chunk size: the first calls after load are slow on CPU.
    bundle.synthesize("Sure, I can help.")
    # One discarded replay: the first pipeline pays for lazy set-up (threads, G2P caches).
    await replay("clause", bundle, kokoro, args.interval_ms / 1000)
    results = []
    for policy in args.policies:
        rows = []
        for _ in range(args.repeats):
            rows.append(analyse(await replay(policy, bundle, kokoro, args.interval_ms / 1000)))
        results.append(median_row(rows))
        logger.info(f"{policy}: {results[-1]['ttfa_ms']} ms TTFA, {results[-1]['gaps_ms']} ms gaps")
    print()
    print(
        f"Kokoro {args.tts} on {bundle.device}, one word every {args.interval_ms:.0f} ms, "
        f"{len(REPLY.split())} words, median of {args.repeats}"
    )
    print(table(results))
    report = {
        "benchmark": "tts_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tts": args.tts,
        "voice": args.voice,
        "interval_ms": args.interval_ms,
        "repeats": args.repeats,
        "reply": REPLY,
        "load_s": round(load_s, 2),
        "machine": machine(bundle),
        "chunker_defaults": ChunkerConfig().model_dump(),
        "kokoro": kokoro.model_dump(mode="json"),
        "results": results,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = args.tts.replace(":", "-").replace("/", "_").replace(".onnx", "")
        path = (
            RESULTS / f"tts_bench-{name}-{bundle.device}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
        )
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tts", default="dummy:full", help="Kokoro spec (default dummy:full)")
    p.add_argument("--voice", default="af_heart")
    p.add_argument("--voices-file", default=None, help="ONNX backend: voices .npz")
    p.add_argument("--device", default="auto")
    p.add_argument("--interval-ms", type=float, default=25.0, help="time between tokens (one word each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
