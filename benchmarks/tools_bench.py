"""What a function call costs a voice turn: time from the call to the first spoken word of the answer.

Each turn, the model is constrained to call ``lookup`` (a logits processor forces the call's
tokens, so a random-weight dummy behaves like a model that decided to call), the handler answers
at once, and the model answers. Per turn:

- ``call_ms``: utterance in -> handler started (prefill, decoding the call, parsing);
- ``resume_ms``: handler's result -> first answer token out (context update, re-render,
  prefill of the call and result, first decode step): the latency the call adds beyond its handler;
- ``resume_prefill_tokens``: prompt tokens computed for the answer's request (the rest came from
  the KV cache), against ``resume_prompt_tokens``.

Run with and without KV-cache reuse:

    python benchmarks/tools_bench.py                       # dummy:tiny on CPU
    python benchmarks/tools_bench.py --model dummy:full --device cuda --turns 5

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
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

import numpy as np
import pytest
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame, LLMTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import VoxtralConfig  # noqa: E402
from voxtral_pipeline.frames import UserUtteranceFrame  # noqa: E402
from voxtral_pipeline.machine import machine_info  # noqa: E402
from voxtral_pipeline.models.tekken import EOS_TOKEN_ID, TOOL_CALLS_TOKEN_ID  # noqa: E402
from voxtral_pipeline.models.voxtral import load_voxtral  # noqa: E402
from voxtral_pipeline.processors.voxtral import VoxtralLLMService  # noqa: E402
from voxtral_pipeline.testing.voxtral import ForcedGeneration  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOOKUP = FunctionSchema(
    name="lookup",
    description="Look up an order.",
    properties={"order_id": {"type": "string"}},
    required=["order_id"],
)
END_INST = 3 + 1  # [/INST]


def force_calls(bundle: Any) -> None:
    """Every new user turn starts with a call to ``lookup``; the answer after it is free."""
    text = json.dumps([{"name": "lookup", "arguments": {"order_id": "A123"}}])
    ids = [TOOL_CALLS_TOKEN_ID, *bundle.tokenizer.encode(text, add_special_tokens=False), EOS_TOKEN_ID]
    # The tests' forcing logits processor; this process ends with the benchmark, so nothing is undone.
    ForcedGeneration(
        bundle.model, pytest.MonkeyPatch(), lambda prompt: ids if prompt[-1] == END_INST else None
    )


class _Clock(FrameProcessor):
    def __init__(self, marks: dict[str, list[float]], done: asyncio.Event):
        super().__init__()
        self.marks, self.done = marks, done

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and len(self.marks["first_text"]) < len(self.marks["result"]):
            self.marks["first_text"].append(time.perf_counter())
        if isinstance(frame, LLMFullResponseEndFrame):
            self.done.set()
        await self.push_frame(frame, direction)


def utterance(secs: float, seed: int) -> UserUtteranceFrame:
    samples = (0.1 * np.random.default_rng(seed).standard_normal(int(secs * 16000))).astype(np.float32)
    return UserUtteranceFrame.ended_at(samples)


async def run_config(bundle: Any, kv_cache: bool, turns: int, max_new_tokens: int) -> list[dict[str, Any]]:
    marks: dict[str, list[float]] = {"sent": [], "handler": [], "result": [], "first_text": []}
    config = VoxtralConfig(
        model=bundle.spec,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        warmup=False,
        transcribe_history=False,
        kv_cache=kv_cache,
        tools={"filler": False},
    )
    service = VoxtralLLMService(config, bundle=bundle, tools=[LOOKUP])

    async def lookup(params):
        marks["handler"].append(time.perf_counter())
        marks["result"].append(time.perf_counter())
        await params.result_callback({"status": "shipped"})

    service.register_function("lookup", lookup)
    done = asyncio.Event()
    worker = PipelineWorker(
        Pipeline([service, _Clock(marks, done)]),
        params=PipelineParams(),
        enable_rtvi=False,
        cancel_on_idle_timeout=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)
    for i in range(turns):
        done.clear()
        marks["sent"].append(time.perf_counter())
        await worker.queue_frame(utterance(2.0, seed=i))
        await asyncio.wait_for(done.wait(), 600)
        if service.engine is not None:  # let the idle refresh run, as between real turns
            while service.engine.busy:
                await asyncio.sleep(0.01)
    await worker.queue_frame(EndFrame())
    await task
    rows = []
    for i, stats in enumerate(service.turn_stats):
        first = marks["first_text"][i] if i < len(marks["first_text"]) else None
        calls = stats.tool_calls or []
        rows.append(
            {
                "turn": i,
                "call_ms": (marks["handler"][i] - marks["sent"][i]) * 1000,
                "resume_ms": None if first is None else (first - marks["result"][i]) * 1000,
                "prompt_tokens": stats.prompt_tokens,
                "prefill_tokens": stats.prefill_tokens,
                "generate_calls": stats.generate_calls,
                "tool_error": calls[0].error if calls else "no call",
            }
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dummy:tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    bundle = load_voxtral(args.model, args.device, seed=0)
    force_calls(bundle)
    results: dict[str, Any] = {}
    for kv in (True, False):
        engine = getattr(bundle, "_shared_engine", None)
        if engine is not None:  # the engine's KV setting is fixed at creation: start a fresh one
            engine.close()
        rows = await run_config(bundle, kv, args.turns, args.max_new_tokens)
        steady = [r for r in rows[1:] if r["resume_ms"] is not None] or rows
        results["kv_cache" if kv else "no_kv_cache"] = {
            "turns": rows,
            "resume_ms_median": statistics.median(
                r["resume_ms"] for r in steady if r["resume_ms"] is not None
            ),
            "call_ms_median": statistics.median(r["call_ms"] for r in steady),
            "prefill_tokens_median": statistics.median(r["prefill_tokens"] for r in steady),
            "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in steady),
        }
    print(f"{'config':<12} {'call ms':>9} {'resume ms':>10} {'prefill/prompt tokens (both requests)':>40}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['call_ms_median']:>9.1f} {r['resume_ms_median']:>10.1f} "
            f"{r['prefill_tokens_median']:>20.0f} / {r['prompt_tokens_median']:.0f}"
        )
    RESULTS.mkdir(exist_ok=True)
    name = f"tools_bench-{args.model.replace(':', '-').replace('/', '-')}-{args.device}.json"
    out = RESULTS / name
    record = {
        "benchmark": "tools_bench",
        "model": args.model,
        "device": args.device,
        "turns": args.turns,
        "machine": machine_info(),
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
