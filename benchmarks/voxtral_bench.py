"""Voxtral stage benchmark: a 10-turn conversation with and without KV-cache reuse.

Each turn is one ``UserUtteranceFrame`` sent through the real stage (``VoxtralLLMService`` on the
shared engine) in a pipecat pipeline; its end of speech is "now" when it is sent. Between turns
the benchmark waits for the engine to be idle, as if the bot were speaking (idle-time transcripts
and cache refreshes run then, off the critical path). Per turn:

- ``ttft_model_ms``: from the start of ``generate()`` to the first token (encoder + prefill + 1 step);
- ``ttft_eos_ms``: from the end of user speech to the first ``LLMTextFrame`` leaving the stage
  (tokenizing, mel features, queueing, model, thread hop and pipeline included);
- ``decode_tok_s``: decode rate after the first token;
- ``prompt_tokens`` / ``prefill_tokens``: the prompt, and what was actually computed this turn.

Timings are per-turn medians over ``--repeats`` conversations (each on a fresh session).

    python -m benchmarks.voxtral_bench                          # dummy:tiny on CPU
    python -m benchmarks.voxtral_bench --model dummy:full --device cuda --new-tokens 128

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame, LLMTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.config import VoxtralConfig  # noqa: E402
from voxtral_pipeline.frames import UserUtteranceFrame  # noqa: E402
from voxtral_pipeline.machine import machine_info  # noqa: E402
from voxtral_pipeline.models.voxtral import load_voxtral  # noqa: E402
from voxtral_pipeline.processors.voxtral import VoxtralEngine, VoxtralLLMService  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class _Recorder(FrameProcessor):
    """Notes when the first token of each answer leaves the stage, and when each answer ends."""

    def __init__(self):
        super().__init__()
        self.first_token_at: list[float] = []
        self.ends = 0
        self._open = False
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not self._open:
            self._open = True
            self.first_token_at.append(time.time())
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._open = False
            self.ends += 1
            self.changed.set()
        await self.push_frame(frame, direction)


def _utterance(secs: float, seed: int) -> tuple[UserUtteranceFrame, float]:
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(int(secs * 16000))).astype(np.float32)
    frame = UserUtteranceFrame.ended_at(samples)
    return frame, frame.speech_end_time


async def run_conversation(
    engine: VoxtralEngine, config: VoxtralConfig, turns: int, new_tokens: int
) -> list[dict]:
    service = VoxtralLLMService(config, engine=engine, warmup=False, min_new_tokens=new_tokens)
    recorder = _Recorder()
    worker = PipelineWorker(
        Pipeline([service, recorder]),
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        enable_rtvi=False,
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker, _frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    await started.wait()
    rows = []
    for i in range(turns):
        frame, end_of_speech = _utterance(2.0 + (i % 3), seed=100 + i)
        await worker.queue_frame(frame)
        while recorder.ends < i + 1:
            recorder.changed.clear()
            await recorder.changed.wait()
        while engine.busy:  # the bot "speaks": idle-time transcripts and refreshes run now
            await asyncio.sleep(0.005)
        s = service.turn_stats[i]
        rows.append(
            {
                "turn": i + 1,
                "audio_secs": round(s.audio_secs, 2),
                "prompt_tokens": s.prompt_tokens,
                "audio_tokens": s.audio_tokens,
                "prefill_tokens": s.prefill_tokens,
                "completion_tokens": s.completion_tokens,
                "generate_calls": s.generate_calls,
                "prepare_ms": round(s.prepare_ms, 2),
                "ttft_model_ms": round(s.first_token_ms, 2),
                "ttft_eos_ms": round((recorder.first_token_at[i] - end_of_speech) * 1000, 2),
                "decode_tok_s": round(s.decode_tokens_per_s or 0.0, 1),
            }
        )
    await worker.queue_frame(EndFrame())
    await run
    engine.release_session(service.session_id)
    return rows


def machine() -> dict[str, Any]:
    import transformers

    return machine_info(transformers=transformers.__version__)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per-turn medians over repeated conversations (token counts are the same in every run)."""
    timed = ("prepare_ms", "ttft_model_ms", "ttft_eos_ms", "decode_tok_s")
    rows = []
    for turn in zip(*runs, strict=True):
        row = dict(turn[0])
        for key in timed:
            row[key] = round(statistics.median(r[key] for r in turn), 2)
        rows.append(row)
    return rows


def _summary(rows: list[dict]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    return {
        "ttft_model_ms_median": med("ttft_model_ms"),
        "ttft_model_ms_max": max(r["ttft_model_ms"] for r in rows),
        "ttft_eos_ms_median": med("ttft_eos_ms"),
        "ttft_eos_ms_max": max(r["ttft_eos_ms"] for r in rows),
        "decode_tok_s_median": med("decode_tok_s"),
        "prefill_tokens": [r["prefill_tokens"] for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer (EOS ignored)")
    p.add_argument("--repeats", type=int, default=3, help="conversations per setting; per-turn medians")
    p.add_argument("--static-cache", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    config = VoxtralConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        temperature=0.0,
        max_new_tokens=args.new_tokens,
        seed=0,
        static_cache=args.static_cache,
        compile=args.compile,
    )
    bundle = load_voxtral(
        args.model, args.device, args.dtype, seed=0, attn_implementation=config.attn_implementation
    )
    results: dict[str, Any] = {
        "benchmark": "voxtral_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "model": args.model,
        "device": bundle.device,
        "dtype": str(bundle.dtype).removeprefix("torch."),
        "attn_implementation": config.attn_implementation,
        "static_cache": args.static_cache,
        "compile": args.compile,
        "turns": args.turns,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "history_audio_turns": config.history_audio_turns,
        "runs": {},
    }
    for name, kv in (("kv_reuse", True), ("no_kv_reuse", False)):
        engine = VoxtralEngine(
            bundle,
            kv_cache=kv,
            static_cache=args.static_cache,
            compile=args.compile,
            kv_cache_max_tokens=16384,
        )
        # Warm-up: one short conversation, so lazy initialization (and compilation) is not measured.
        asyncio.run(run_conversation(engine, config, 2, 4))
        runs = [
            asyncio.run(run_conversation(engine, config, args.turns, args.new_tokens))
            for _ in range(args.repeats)
        ]
        engine.close()
        rows = _median_rows(runs)
        results["runs"][name] = {"turns": rows, "summary": _summary(rows)}

    results["load_average_1m_after"] = machine()["load_average_1m"]  # other work on the machine skews timings
    kv, no = results["runs"]["kv_reuse"]["turns"], results["runs"]["no_kv_reuse"]["turns"]
    head = (
        f"{'turn':>4} {'prompt':>6} | {'prefill':>7} {'ttft_model':>10} {'ttft_eos':>9} {'tok/s':>6} |"
        f" {'prefill':>7} {'ttft_model':>10} {'ttft_eos':>9} {'tok/s':>6}"
    )
    print(f"Voxtral {args.model} on {bundle.device} ({results['dtype']}), {machine()['cpu']}")
    print(f"{'':>11} | {'with KV reuse':^37} | {'without KV reuse':^37}")
    print(head)
    print("-" * len(head))
    for a, b in zip(kv, no, strict=True):
        print(
            f"{a['turn']:>4} {a['prompt_tokens']:>6} | {a['prefill_tokens']:>7} {a['ttft_model_ms']:>8.1f}ms"
            f" {a['ttft_eos_ms']:>7.1f}ms {a['decode_tok_s']:>6.0f} | {b['prefill_tokens']:>7}"
            f" {b['ttft_model_ms']:>8.1f}ms {b['ttft_eos_ms']:>7.1f}ms {b['decode_tok_s']:>6.0f}"
        )
    for name in ("kv_reuse", "no_kv_reuse"):
        s = results["runs"][name]["summary"]
        print(
            f"{name}: TTFT model median {s['ttft_model_ms_median']} ms (max {s['ttft_model_ms_max']}), "
            f"from end of speech median {s['ttft_eos_ms_median']} ms (max {s['ttft_eos_ms_max']}), "
            f"decode {s['decode_tok_s_median']} tok/s"
        )

    where = results["machine"]["gpu"] if bundle.device.startswith("cuda") else results["machine"]["cpu"]
    name = f"voxtral_bench-{_slug(args.model)}-{bundle.device.split(':')[0]}-{_slug(where or 'unknown')}"
    out = args.out or RESULTS / f"{name}-{os.cpu_count()}c.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
