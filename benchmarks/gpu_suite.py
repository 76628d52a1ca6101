"""The GPU suite: everything a lent GPU should measure, in one command and one JSON.

    python benchmarks/gpu_suite.py --out gpu_suite.json            # a CUDA machine, < 8 min
    python benchmarks/gpu_suite.py --tiny --out /tmp/suite.json    # CPU dry run with tiny models (CI)

Sections (each timed and written even when another fails; an error is recorded, not raised):

- ``voxtral_turns``: ``dummy:full`` Voxtral (bf16 on GPUs with native bf16) over a 10-turn
  conversation through the real stage on the shared engine: TTFT per turn (model and from the end
  of speech), prompt/prefill tokens, decode tok/s; once with the dynamic cache, once with the
  static cache + ``torch.compile`` (one warm-up conversation each, not measured);
- ``prefill_375``: one 30-s utterance (375 audio tokens) on an empty cache: encoder + prefill
  time to the first token (median of 5);
- ``concurrency``: 1/4/8/16 sessions on one engine, one turn each sent at once: TTFT per
  session (median, max) and the engine's total decode tok/s;
- ``kokoro_first_audio``: ``dummy:full`` Kokoro, per chunk size (1, 2, 4, 8, 16 words): synthesis
  time, first audible sample (|x| > 1e-3) after the text arrived, real-time factor;
- ``voice_to_voice``: the packaged conversation through the whole pipeline
  (``voxtral-pipeline bench``'s runner, file transport, VAD, Smart Turn, chunker, Kokoro):
  voice-to-voice p50/p95. Skipped with the reason when a package it needs is missing.

On a bare GPU machine with CUDA torch + transformers preinstalled, carry the other wheels
(docs/deployment.md, "The GPU suite"). ``--tiny`` uses ``dummy:tiny`` models on the CPU, two
sessions levels and fewer turns: what CI runs (tests/test_gpu_suite.py), checking the mechanics,
never the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Packages each section needs beyond torch and transformers (carried as wheels on a bare machine).
NEEDS = {
    "voxtral_turns": ["pipecat", "mistral_common", "loguru", "pydantic", "soundfile"],
    "prefill_375": ["pipecat", "mistral_common", "loguru", "pydantic", "soundfile"],
    "concurrency": ["pipecat", "mistral_common", "loguru", "pydantic", "soundfile"],
    "kokoro_first_audio": ["kokoro", "misaki", "spacy", "loguru"],  # misaki's English G2P needs spaCy
    "voice_to_voice": ["pipecat", "kokoro", "misaki", "spacy", "onnxruntime"],
}


# ----------------------------------------------------------------------------------------------
# The one place that touches the Voxtral stage/engine API (being reorganised: keep it here).


class VoxtralRig:
    """A loaded Voxtral, its shared engine, and stage sessions on it."""

    def __init__(self, model: str, device: str, dtype: str, static_cache: bool, compile: bool):
        from voxtral_pipeline.config import VoxtralConfig
        from voxtral_pipeline.models.voxtral import load_voxtral
        from voxtral_pipeline.processors.voxtral import VoxtralEngine

        self.config = VoxtralConfig(
            model=model,
            device=device,
            dtype=dtype,
            temperature=0.0,
            seed=0,
            static_cache=static_cache,
            compile=compile,
            transcribe_history=True,
        )
        self.bundle = load_voxtral(model, device, dtype, seed=0)
        self.engine = VoxtralEngine(
            self.bundle, kv_cache=True, static_cache=static_cache, compile=compile, kv_cache_max_tokens=16384
        )

    def conversation(self, turns: int, new_tokens: int) -> list[dict[str, Any]]:
        """One session, ``turns`` user turns; per-turn stats (benchmarks/voxtral_bench.py's runner)."""
        from benchmarks.voxtral_bench import run_conversation

        config = self.config.model_copy(update={"max_new_tokens": new_tokens})
        return asyncio.run(run_conversation(self.engine, config, turns, new_tokens))

    def concurrent(self, sessions: int, new_tokens: int, secs: float = 3.0) -> list[dict[str, Any]]:
        """``sessions`` stages on the engine, one turn each sent at the same moment."""
        return asyncio.run(_concurrent(self, sessions, new_tokens, secs))

    def close(self) -> None:
        self.engine.close()
        del self.engine, self.bundle
        _free_gpu()


async def _concurrent(rig: VoxtralRig, n: int, new_tokens: int, secs: float) -> list[dict[str, Any]]:
    import numpy as np
    from pipecat.frames.frames import EndFrame, LLMFullResponseEndFrame, LLMTextFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from voxtral_pipeline.frames import UserUtteranceFrame
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService

    class Probe(FrameProcessor):
        def __init__(self):
            super().__init__()
            self.first: float | None = None
            self.done = asyncio.Event()

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMTextFrame) and self.first is None:
                self.first = time.perf_counter()
            if isinstance(frame, LLMFullResponseEndFrame):
                self.done.set()
            await self.push_frame(frame, direction)

    config = rig.config.model_copy(update={"max_new_tokens": new_tokens, "transcribe_history": False})
    services = [
        VoxtralLLMService(config, engine=rig.engine, warmup=False, min_new_tokens=new_tokens)
        for _ in range(n)
    ]
    probes = [Probe() for _ in range(n)]
    workers = [
        PipelineWorker(Pipeline([s, p]), params=PipelineParams(enable_metrics=True), enable_rtvi=False,
                       cancel_on_idle_timeout=False)
        for s, p in zip(services, probes, strict=True)
    ]  # fmt: skip
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    run = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)
    rng = np.random.default_rng(n)
    frames = [
        UserUtteranceFrame.ended_at((0.1 * rng.standard_normal(int(secs * 16000))).astype(np.float32))
        for _ in range(n)
    ]
    sent = time.perf_counter()
    for worker, frame in zip(workers, frames, strict=True):
        await worker.queue_frame(frame)
    await asyncio.gather(*(p.done.wait() for p in probes))
    wall = time.perf_counter() - sent
    for worker in workers:
        await worker.queue_frame(EndFrame())
    await run
    rows = []
    for service, probe in zip(services, probes, strict=True):
        s = service.turn_stats[0]
        rows.append(
            {
                "ttft_ms": round(((probe.first or time.perf_counter()) - sent) * 1000, 1),
                "completion_tokens": s.completion_tokens,
                "queued_ms": round(s.queued_ms or 0.0, 1),
            }
        )
        rig.engine.release_session(service.session_id)
    rows.append({"wall_s": round(wall, 3)})
    return rows


# ----------------------------------------------------------------------------------------------
# Sections


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def voxtral_turns(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, static in (("dynamic_cache", False), ("static_cache_compile", True)):
        rig = VoxtralRig(args.voxtral, args.device, args.dtype, static_cache=static, compile=static)
        try:
            t0 = time.perf_counter()
            rig.conversation(2, 4)  # warm-up (and compilation): not measured
            warm_s = time.perf_counter() - t0
            rows = rig.conversation(args.turns, args.new_tokens)
        finally:
            out.setdefault("dtype", str(rig.bundle.dtype).removeprefix("torch."))
            out.setdefault("device", rig.bundle.device)
            rig.close()
        out[name] = {
            "warmup_s": round(warm_s, 1),
            "turns": rows,
            "ttft_model_ms_median": _median([r["ttft_model_ms"] for r in rows]),
            "ttft_eos_ms_median": _median([r["ttft_eos_ms"] for r in rows]),
            "decode_tok_s_median": _median([r["decode_tok_s"] for r in rows]),
        }
    return out


def prefill_375(args: argparse.Namespace) -> dict[str, Any]:
    rig = VoxtralRig(args.voxtral, args.device, args.dtype, static_cache=False, compile=False)
    try:
        rig.concurrent(1, 2, secs=29.0)  # warm-up
        ttfts = [rig.concurrent(1, 2, secs=29.0)[0]["ttft_ms"] for _ in range(args.repeats)]
    finally:
        rig.close()
    return {"audio_secs": 29.0, "audio_tokens": 375, "ttft_ms": ttfts, "ttft_ms_median": _median(ttfts)}


def concurrency(args: argparse.Namespace) -> dict[str, Any]:
    rig = VoxtralRig(args.voxtral, args.device, args.dtype, static_cache=False, compile=False)
    out: dict[str, Any] = {}
    try:
        rig.concurrent(1, 4)  # warm-up
        for n in args.sessions:
            rows = rig.concurrent(n, args.new_tokens)
            wall = rows.pop()["wall_s"]
            ttfts = [r["ttft_ms"] for r in rows]
            out[str(n)] = {
                "ttft_ms_median": _median(ttfts),
                "ttft_ms_max": max(ttfts),
                "tokens": sum(r["completion_tokens"] for r in rows),
                "wall_s": wall,
                "total_tok_s": round(sum(r["completion_tokens"] for r in rows) / wall, 1),
            }
    finally:
        rig.close()
    return out


def kokoro_first_audio(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from voxtral_pipeline.models.kokoro import load_kokoro

    bundle = load_kokoro(args.kokoro, "af_heart", args.device, "a")
    words = "the quick brown fox jumps over the lazy dog while five wizards box jolly quickly at dawn".split()
    bundle.synthesize("Hello there.")  # warm-up
    out: dict[str, Any] = {"sample_rate": 24000}
    for n in args.chunk_words:
        text = " ".join(words[:n]) + "."
        rows = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            audio = np.asarray(bundle.synthesize(text)).reshape(-1)
            synth = time.perf_counter() - t0
            loud = np.flatnonzero(np.abs(audio) > 1e-3)
            first = synth + (loud[0] / 24000 if loud.size else float("nan"))
            rows.append((synth, first, len(audio) / 24000))
        out[f"{n}_words"] = {
            "synth_ms": _median([r[0] * 1000 for r in rows]),
            "first_audible_ms": _median([r[1] * 1000 for r in rows]),
            "audio_s": round(rows[0][2], 2),
            "rtf": _median([r[0] / r[2] for r in rows if r[2]]),
        }
    del bundle
    _free_gpu()
    return out


def voice_to_voice(args: argparse.Namespace) -> dict[str, Any]:
    from voxtral_pipeline.bench import BenchOptions, run_bench

    options = BenchOptions(
        voxtral_model=args.voxtral, tts_model=args.kokoro, device=args.device, reply_tokens=24, stock=False,
        chart=False,
    )  # fmt: skip
    result = asyncio.run(run_bench(options))
    summary = result["runs"]["chunker"]["summary"]
    return {"turns": summary.get("turns"), "summary": summary, "figures": result.get("figures")}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "voxtral_turns": voxtral_turns,
    "prefill_375": prefill_375,
    "concurrency": concurrency,
    "kokoro_first_audio": kokoro_first_audio,
    "voice_to_voice": voice_to_voice,
}


def _device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), compute_capability=[p.major, p.minor]
        )
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU dry run with dummy:tiny models (CI)")
    p.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip sections once this much time is spent")
    args = p.parse_args(argv)
    if args.tiny:
        args.voxtral, args.kokoro, args.device, args.dtype = "dummy:tiny", "dummy:tiny", "cpu", "float32"
        args.turns, args.new_tokens, args.repeats, args.sessions = 3, 8, 2, [1, 2]
        args.chunk_words = [1, 4, 16]
    else:
        args.voxtral, args.kokoro, args.device, args.dtype = "dummy:full", "dummy:full", "cuda", "auto"
        args.turns, args.new_tokens, args.repeats, args.sessions = 10, 64, 5, [1, 4, 8, 16]
        args.chunk_words = [1, 2, 4, 8, 16]

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "suite": "gpu_suite",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "tiny" if args.tiny else "full",
        "models": {"voxtral": args.voxtral, "kokoro": args.kokoro},
        "device": _device_info(),
        "sections": {},
    }
    for name in args.only or list(SECTIONS):
        entry: dict[str, Any]
        missing = [m for m in NEEDS.get(name, []) if importlib.util.find_spec(m) is None]
        spent = time.perf_counter() - started
        if missing:
            entry = {"skipped": f"missing packages: {', '.join(missing)}"}
        elif spent > args.budget_s:
            entry = {"skipped": f"time budget spent ({spent:.0f} s of {args.budget_s:.0f} s)"}
        else:
            t0 = time.perf_counter()
            print(f"gpu_suite: {name} ...", file=sys.stderr, flush=True)
            try:
                entry = SECTIONS[name](args)
            except Exception as e:  # one broken section must not lose the others' figures
                entry = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
                _free_gpu()
            entry["section_s"] = round(time.perf_counter() - t0, 1)
        result["sections"][name] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every section: a timeout keeps the rest
        print(f"gpu_suite: {name}: {json.dumps(entry)[:300]}", file=sys.stderr, flush=True)
    result["total_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['total_s']} s)")
    failed = [n for n, e in result["sections"].items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
