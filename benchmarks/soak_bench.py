"""Soak benchmark: one long session through Voxtral, the chunker AND Kokoro, sampled as it goes.

The CI soak (tests/test_soak.py) leaves Kokoro out of its 300 turns to stay fast; here every
answer is also synthesized. Each turn is real espeak speech sent as a ``UserUtteranceFrame``;
the next one is sent when the previous answer has been spoken (its ``TTSStoppedFrame``). Every
``--every`` turns it records resident memory (after a heap trim), the KV cache's size, threads,
asyncio tasks, the turn's prompt and prefill, and the time per turn.

    python -m benchmarks.soak_bench                    # 300 turns, dummy:tiny, CPU
    python -m benchmarks.soak_bench --turns 1000 --history-audio-turns 4

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from benchmarks.load_bench import QUESTIONS, speak  # noqa: E402
from voxtral_pipeline.audio import float_to_pcm16  # noqa: E402
from voxtral_pipeline.config import ChunkerConfig, KokoroConfig, VoxtralConfig  # noqa: E402
from voxtral_pipeline.frames import UserUtteranceFrame  # noqa: E402
from voxtral_pipeline.machine import machine_info  # noqa: E402
from voxtral_pipeline.models.kokoro import load_kokoro  # noqa: E402
from voxtral_pipeline.processors.chunker import WordChunker  # noqa: E402
from voxtral_pipeline.processors.kokoro import KokoroTTSService  # noqa: E402
from voxtral_pipeline.processors.voxtral import VoxtralLLMService  # noqa: E402
from voxtral_pipeline.processors.voxtral.backend import shared_bundle  # noqa: E402
from voxtral_pipeline.testing.bench_cli import add_common_args, warnings_only, write_results  # noqa: E402
from voxtral_pipeline.testing.resources import Snapshot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class _Ends(FrameProcessor):
    """Counts answers and spoken replies at the end of the stages; keeps no frames."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.spoken = 0
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame):
            self.answers += 1
        elif isinstance(frame, TTSStoppedFrame):
            self.spoken += 1
        self.changed.set()
        await self.push_frame(frame, direction)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    vconfig = VoxtralConfig(
        model=args.model,
        device=args.device,
        max_new_tokens=args.new_tokens,
        history_audio_turns=args.history_audio_turns,
        transcribe_history=args.transcribe,
        warmup=False,
        seed=0,
    )
    kconfig = KokoroConfig(model=args.tts_model, device=args.device)
    kokoro = await asyncio.to_thread(
        load_kokoro, kconfig.model, kconfig.voice, kconfig.device, kconfig.lang_code
    )
    voxtral = VoxtralLLMService(vconfig, bundle=await asyncio.to_thread(shared_bundle, vconfig))
    ends = _Ends()
    stages = [voxtral, WordChunker(ChunkerConfig()), KokoroTTSService(kconfig, bundle=kokoro), ends]
    worker = PipelineWorker(
        Pipeline(stages), params=PipelineParams(), enable_rtvi=False, cancel_on_idle_timeout=False
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    speech = [float_to_pcm16(speak(q)) for q in QUESTIONS]
    samples: list[dict[str, Any]] = []
    started = last_t = time.perf_counter()
    for turn in range(args.turns):
        now = time.time()
        pcm = speech[turn % len(speech)]
        spoken_before = ends.spoken
        await worker.queue_frame(UserUtteranceFrame(pcm, 16000, now - len(pcm) / 32000, now, now, now))
        while ends.answers < turn + 1 or (
            ends.spoken == spoken_before and voxtral.turn_stats[-1].text.strip()
        ):
            ends.changed.clear()
            try:
                await asyncio.wait_for(ends.changed.wait(), 5.0)
            except asyncio.TimeoutError:  # an answer with nothing to pronounce is never "spoken"
                break
        if (turn + 1) % args.every == 0 or turn == 0:
            snap = Snapshot.take(voxtral.engine)
            stats = voxtral.turn_stats[-1]
            t = time.perf_counter()
            samples.append(
                {
                    "turn": turn + 1,
                    "rss_mb": round(snap.rss_mb, 1),
                    "kv_cache_mb": round(snap.cache_mb, 2),
                    "threads": len(snap.threads),
                    "tasks": len(snap.tasks),
                    "prompt_tokens": stats.prompt_tokens,
                    "prefill_tokens": stats.prefill_tokens,
                    "cached_tokens": voxtral.engine.cached_tokens(voxtral.session_id),
                    "audio_turns_held": sum(u.audio is not None for u in voxtral.context.user_turns),
                    "s_per_turn": round((t - last_t) / (args.every if turn else 1), 3),
                }
            )
            last_t = t
            print(samples[-1], flush=True)
    errors = sum(1 for s in voxtral.turn_stats if s.error)
    await worker.queue_frame(EndFrame())
    await run
    return {
        "benchmark": "soak_bench",
        "model": args.model,
        "tts_model": args.tts_model,
        "turns": args.turns,
        "new_tokens": args.new_tokens,
        "history_audio_turns": args.history_audio_turns,
        "transcribe_history": args.transcribe,
        "errors": errors,
        "replies_spoken": ends.spoken,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
        "samples": samples,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--history-audio-turns", type=int, default=1)
    p.add_argument("--transcribe", action="store_true", help="transcribe old turns while idle")
    args = p.parse_args()
    warnings_only()
    results = asyncio.run(soak(args))
    first, last = results["samples"][1 if len(results["samples"]) > 1 else 0], results["samples"][-1]
    print(
        f"{results['turns']} turns in {results['wall_s']} s, {results['errors']} errors, "
        f"{results['replies_spoken']} replies spoken; RSS {first['rss_mb']} -> {last['rss_mb']} MB "
        f"(KV cache {first['kv_cache_mb']} -> {last['kv_cache_mb']} MB), threads {first['threads']} -> "
        f"{last['threads']}, tasks {first['tasks']} -> {last['tasks']}"
    )
    write_results(results, RESULTS, "soak_bench", args)


if __name__ == "__main__":
    main()
