"""What pipecat's RTVI (RTVIProcessor + RTVIObserver, ``transport.rtvi``) costs per frame.

Pushes the frame mix of a spoken turn (per second: 50 input audio packets, 50 output audio packets,
10 LLM tokens, speaking-state frames) through a pipeline of as many pass-through stages as ours
(turns, Voxtral, chunker, Kokoro, metrics, playback), with and without RTVI, alternately, and
reports the CPU time per frame (this process's own, so other load on a shared machine counts
less) and the difference: the per-frame cost RTVI adds.

    python -m benchmarks.rtvi_bench                # 10,000 frames, 5 rounds each
    python -m benchmarks.rtvi_bench --frames 50000 --rounds 9

Prints the numbers and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = 6  # turns, Voxtral, chunker, Kokoro, metrics, playback


class _Pass(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


def turn_frames(n: int) -> list[Frame]:
    """``n`` frames in a spoken turn's proportions (one second: 50 + 50 audio, 10 tokens, 4 state)."""
    second: list[Frame] = [
        UserStartedSpeakingFrame(),
        UserStoppedSpeakingFrame(),
        LLMFullResponseStartFrame(),
    ]
    second += [InputAudioRawFrame(b"\x00" * 640, 16000, 1) for _ in range(50)]
    second += [LLMTextFrame(f" word{i}") for i in range(10)]
    second += [BotStartedSpeakingFrame()]
    second += [TTSAudioRawFrame(b"\x00" * 960, 24000, 1) for _ in range(50)]
    second += [BotStoppedSpeakingFrame(), LLMFullResponseEndFrame()]
    frames: list[Frame] = []
    while len(frames) < n:
        frames += [type(f)(**_fields(f)) for f in second]
    return frames[:n]


def _fields(frame: Frame) -> dict[str, Any]:
    if isinstance(frame, (InputAudioRawFrame, TTSAudioRawFrame)):
        return {"audio": frame.audio, "sample_rate": frame.sample_rate, "num_channels": 1}
    if isinstance(frame, LLMTextFrame):
        return {"text": frame.text}
    return {}


async def one_run(n: int, rtvi: bool) -> float:
    """CPU seconds (this process's: the machine may be shared) to push ``n`` frames through the stages."""
    frames = turn_frames(n)
    pipeline = Pipeline([_Pass() for _ in range(STAGES)])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True),
        enable_rtvi=rtvi,
        idle_timeout_secs=None,
    )
    if rtvi:  # as a connected client would have done

        @worker.event_handler("on_pipeline_started")
        async def _started(_worker, _frame):
            await worker.rtvi.set_client_ready()

    runner = WorkerRunner(handle_sigint=False)
    started = time.process_time()
    await worker.queue_frames([*frames, EndFrame()])
    await runner.add_workers(worker)
    await runner.run()
    return time.process_time() - started


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    await one_run(2000, True)  # warm up imports and caches
    await one_run(2000, False)
    off, on = [], []
    for _ in range(args.rounds):
        off.append(await one_run(args.frames, False))
        on.append(await one_run(args.frames, True))
    per = lambda xs: statistics.median(xs) / args.frames * 1e6  # noqa: E731 - CPU µs per frame
    return {
        "frames": args.frames,
        "rounds": args.rounds,
        "stages": STAGES,
        "off_us_per_frame": round(per(off), 2),
        "on_us_per_frame": round(per(on), 2),
        "rtvi_us_per_frame": round(per(on) - per(off), 2),
        "rtvi_ms_per_second_of_turn": round((per(on) - per(off)) * 165 / 1000, 3),
        "off_cpu_s": [round(x, 3) for x in off],
        "on_cpu_s": [round(x, 3) for x in on],
        "machine": machine_info(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    r = asyncio.run(bench(args))
    print(
        f"{r['frames']} frames through {r['stages']} stages: {r['off_us_per_frame']} µs/frame without RTVI, "
        f"{r['on_us_per_frame']} with; RTVI adds {r['rtvi_us_per_frame']} µs/frame "
        f"({r['rtvi_ms_per_second_of_turn']} ms per second of conversation, 165 frames)"
    )
    out = args.out or RESULTS / f"rtvi_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
