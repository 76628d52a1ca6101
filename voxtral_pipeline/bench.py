"""``voxtral-pipeline bench``: a spoken conversation replayed through the whole pipeline, timed.

The conversation (six spoken questions by default, ``data/bench_conversation.flac``) is played in
real time through the file transport, exactly as ``voxtral-pipeline run --input`` would, with the
chosen models, twice:

- ``chunker``: our pipeline (``WordChunker`` in front of Kokoro in TOKEN mode);
- ``stock``: the same models with no chunker and Kokoro aggregating the tokens itself
  (pipecat's ``TextAggregationMode.SENTENCE``), the baseline a stock pipecat pipeline would have.

Both use the metrics stage's waterfall (docs/metrics.md). Every answer is exactly
``--reply-tokens`` tokens (EOS suppressed until then, on vLLM by ``min_tokens``; 0 lets the model
end them), so the two runs speak the same text and the dummy models' random answers are not cut
to a word or two. The result
is a table (p50/p95 of every mark and stage time, and stock/chunker ratios), a JSON file with every
turn and the machine, and a PNG waterfall chart. ``--compare BASELINE.json`` then lists the
figures that got worse than the baseline by more than the tolerance and exits with status 1 if any
did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from loguru import logger

from voxtral_pipeline.processors.metrics import LATENCY_FIELDS, STAGE_FIELDS, SUMMARY_FIELDS, percentiles
from voxtral_pipeline.processors.voxtral.stats import TurnStats

EXIT_OK = 0
EXIT_WORSE = 1
EXIT_BAD_INPUT = 2
BENCH_NAME = "conversation_bench"
RUNS = ("chunker", "stock")
#: Marks whose stock/chunker ratio is the chunker's gain (those before it are the same in both runs).
GAIN_FIELDS = ("first_chunk_ms", "first_audio_ms", "voice_to_voice_ms")
#: Waterfall segments between successive marks, for the chart: (label, from mark, to mark).
SEGMENTS = (
    ("VAD wait", None, "vad_stop_ms"),
    ("turn detection", "vad_stop_ms", "end_of_turn_ms"),
    ("to Voxtral", "end_of_turn_ms", "inference_start_ms"),
    ("Voxtral TTFT", "inference_start_ms", "ttft_ms"),
    ("first chunk's words", "ttft_ms", "first_chunk_ms"),
    ("Kokoro: chunk to audio", "first_chunk_ms", "first_audio_ms"),
    ("to the transport", "first_audio_ms", "voice_to_voice_ms"),
)


class BenchError(Exception):
    """Bad input to the benchmark or the comparison; the message is for the user as is."""


class NoSpeechError(BenchError):
    """The conversation gave no user turn: nothing to measure."""


#: What the packaged conversation says: espeak-ng at 160 wpm, 0.5 s of silence first and 10 s between
#: the questions (``voxtral_pipeline.testing.speech.conversation(BENCH_QUESTIONS, gap_secs=10.0)``),
#: 16 kHz FLAC, 64 s.
BENCH_QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a fun fact about the ocean.",
    "How far away is the moon from the earth?",
    "Why is the sky blue during the day?",
    "What is the tallest mountain in the world?",
)


def default_input() -> Path:
    """The packaged six-question conversation (``BENCH_QUESTIONS``)."""
    return Path(str(resources.files("voxtral_pipeline").joinpath("data/bench_conversation.flac")))


@dataclass
class BenchOptions:
    """What to run: models, input, reply length, where to write."""

    input: Path = field(default_factory=default_input)
    voxtral_model: str = "dummy:tiny"
    tts_model: str = "dummy:tiny"
    voice: str | None = None
    device: str | None = None
    reply_tokens: int = 48
    repeats: int = 1
    stock: bool = True
    out: Path = Path("benchmarks/results")
    name: str | None = None
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    chart: bool = True


# ----------------------------------------------------------------------------------------------
# Running


def build_config(options: BenchOptions):
    """The pipeline config of both runs (file transport on the input, the chosen models)."""
    from voxtral_pipeline.config import load_config

    overrides: dict[str, Any] = {
        "transport.kind": "file",
        "transport.file.input": str(options.input),
        "voxtral.model": options.voxtral_model,
        "voxtral.max_new_tokens": options.reply_tokens or None,
        "voxtral.seed": 0,
        "kokoro.model": options.tts_model,
        "kokoro.voice": options.voice,
        "voxtral.device": options.device,
        "kokoro.device": options.device,
        "metrics.log_turns": False,
        **options.overrides,
    }
    return load_config(options.config_file, overrides)


def _engine_stats(turn_stats: list[TurnStats], speech_end: float) -> dict[str, Any]:
    s = next((s for s in turn_stats if s.speech_end_time == speech_end), TurnStats(turn=-1))
    r = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {
        "engine_queued_ms": r(s.queued_ms),
        "engine_prepare_ms": r(s.prepare_ms),
        "engine_first_token_ms": r(s.first_token_ms),
        "completion_tokens": s.completion_tokens if s.turn >= 0 else None,
    }


async def run_once(config, stock: bool, reply_tokens: int, voxtral_bundle=None, kokoro_bundle=None) -> dict:
    """Play the conversation once; the metrics report plus the Voxtral engine's own times per turn."""
    from voxtral_pipeline.pipeline import build_pipeline, build_transport
    from voxtral_pipeline.session import SharedModels, build_services

    transport = build_transport(config)
    models = SharedModels(voxtral_bundle, kokoro_bundle)
    voxtral, tts = build_services(config, models, min_new_tokens=reply_tokens, stock_aggregation=stock)
    voice = build_pipeline(config, transport, voxtral=voxtral, tts=tts, stock_aggregation=stock)
    started = time.perf_counter()
    report = await voice.run()
    if voice.fatal_error is not None:
        raise BenchError(str(voice.fatal_error))
    for record, turn in zip(voice.metrics.turns, report["turns"], strict=False):
        turn.update(_engine_stats(voice.voxtral.turn_stats, record.speech_end_time))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["bot_audio_s"] = round(transport.bot_audio_secs(), 2)
    return report


def pool(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several plays of the conversation as one run: every turn (with its ``repeat``), pooled percentiles."""
    if len(reports) == 1:
        return {**reports[0], "repeat_wall_s": [reports[0]["wall_s"]]}
    turns = [{**turn, "repeat": i} for i, report in enumerate(reports) for turn in report["turns"]]
    summary: dict[str, Any] = {"turns": len(turns)}
    for name in SUMMARY_FIELDS:
        summary[name] = percentiles([t.get(name) for t in turns])
    return {
        "turns": turns,
        "summary": summary,
        "repeat_wall_s": [r["wall_s"] for r in reports],
        "bot_audio_s": round(sum(r["bot_audio_s"] for r in reports), 2),
    }


def _load_models(config):
    """Both models, once for both runs (ModelUnavailableError is the caller's to report)."""
    from voxtral_pipeline.session import SharedModels

    models = SharedModels.load(config)
    return models.voxtral, models.tts


async def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Both runs, and the result document (not yet written)."""
    from voxtral_pipeline.machine import machine_info

    config = build_config(options)
    started = time.perf_counter()
    voxtral_bundle, kokoro_bundle = await asyncio.to_thread(_load_models, config)
    load_s = round(time.perf_counter() - started, 1)
    names = RUNS if options.stock else RUNS[:1]
    played: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    # Interleaved (chunker, stock, chunker, ...), so a machine that gets busier affects both alike.
    for repeat in range(options.repeats):
        for name in names:
            logger.info(f"bench: {name} run {repeat + 1}/{options.repeats} ({options.input.name}, real time)")
            report = await run_once(
                config, name == "stock", options.reply_tokens, voxtral_bundle, kokoro_bundle
            )
            if not report["turns"]:
                raise NoSpeechError(f"no speech was heard in {options.input}: no turn to measure")
            played[name].append(report)
    runs = {name: pool(reports) for name, reports in played.items()}
    result: dict[str, Any] = {
        "benchmark": BENCH_NAME,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "voxtral-pipeline bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        "input": str(options.input),
        "voxtral_model": config.voxtral.model,
        "voxtral_backend": config.voxtral.backend,
        "tts_model": config.kokoro.model,
        "voice": config.kokoro.voice,
        "device": options.device or "auto",
        "reply_tokens": options.reply_tokens,
        "repeats": options.repeats,
        "load_s": load_s,
        "machine": machine_info(),
        "settings": {
            "vad_stop_secs": config.turns.vad.stop_secs,
            "chunker": config.chunker.model_dump(mode="json"),
        },
        "runs": runs,
    }
    result["figures"] = flatten_figures(result)
    result["gain"] = chunker_gain(result)
    result["overhead_ms"] = overhead(runs["chunker"])
    return result


# ----------------------------------------------------------------------------------------------
# Figures


def flatten_figures(result: dict[str, Any]) -> dict[str, float]:
    """``{"chunker.voice_to_voice_ms.p50": 612.0, ...}``: the figures ``--compare`` checks.

    Every one is a latency (lower is better): p50 and p95 of every mark and stage time of the
    chunker run (the product), and of the stock run's gain fields.
    """
    out: dict[str, float] = {}
    for run, names in (("chunker", SUMMARY_FIELDS), ("stock", GAIN_FIELDS)):
        summary = result.get("runs", {}).get(run, {}).get("summary", {})
        for name in names:
            for p in ("p50", "p95"):
                value = (summary.get(name) or {}).get(p)
                if isinstance(value, (int, float)):
                    out[f"{run}.{name}.{p}"] = float(value)
    return out


def chunker_gain(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per gain field: chunker and stock p50, and stock/chunker (how many times faster ours is)."""
    runs = result["runs"]
    if "stock" not in runs:
        return {}
    out = {}
    for name in GAIN_FIELDS:
        ours = runs["chunker"]["summary"][name]["p50"]
        stock = runs["stock"]["summary"][name]["p50"]
        ratio = round(stock / ours, 2) if ours and stock is not None else None
        out[name] = {"chunker_p50": ours, "stock_p50": stock, "ratio": ratio}
    return out


def overhead(run: dict[str, Any]) -> dict[str, float | None]:
    """The pipeline's own time per turn (``overhead_ms``): p50, p95 and the worst turn."""
    values = [t["overhead_ms"] for t in run["turns"] if t.get("overhead_ms") is not None]
    summary = run["summary"]["overhead_ms"]
    return {"p50": summary["p50"], "p95": summary["p95"], "max": max(values) if values else None}


def _cell(summary: dict[str, Any], name: str) -> str:
    p = summary.get(name) or {}
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    return f"{f(p.get('p50'))} / {f(p.get('p95'))}"


def format_table(result: dict[str, Any]) -> str:
    """The printed table: p50 / p95 of every mark and stage, per run, and stock/chunker."""
    runs = result["runs"]
    names = [r for r in RUNS if r in runs]
    head = f"{'ms (p50 / p95)':<26}" + "".join(f"{n:>16}" for n in names)
    if "stock" in runs:
        head += f"{'stock/chunker':>15}"
    turns = runs["chunker"]["summary"]["turns"]
    machine = result["machine"]
    lines = [
        f"{result['voxtral_model']} + {result['tts_model']}, {turns} turns, "
        f"{result['reply_tokens'] or 'free-length'} tokens per answer; machine: {machine.get('cpu')}, "
        f"GPU {machine.get('gpu') or 'none'}, load {machine.get('load_average_1m')}",
        head,
    ]
    for title, fields in (("marks from end of speech", LATENCY_FIELDS), ("stage times", STAGE_FIELDS)):
        lines.append(f"{title}:")
        for name in fields:
            row = f"  {name:<24}" + "".join(f"{_cell(runs[n]['summary'], name):>16}" for n in names)
            gain = result.get("gain", {}).get(name)
            if gain and gain["ratio"] is not None:
                row += f"{gain['ratio']:>14.2f}x"
            lines.append(row)
    cut = {n: sum(1 for t in runs[n]["turns"] if t.get("interrupted")) for n in names}
    if any(cut.values()):
        row = f"{'interrupted turns':<26}" + "".join(f"{cut[n]:>16}" for n in names)
        lines += [
            row,
            f"  {'barge_in_ms':<24}"
            + "".join(f"{_cell(runs[n]['summary'], 'barge_in_ms'):>16}" for n in names),
        ]
    o = result["overhead_ms"]
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines.append(
        f"pipeline overhead (voice-to-voice - VAD wait - turn detection - Voxtral - chunk wait - Kokoro): "
        f"p50 {f(o['p50'])} ms, p95 {f(o['p95'])} ms, max {f(o['max'])} ms"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Output


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def result_stem(result: dict[str, Any], name: str | None = None) -> str:
    if name:
        return _slug(name)
    device = "gpu" if result["machine"].get("gpu") else "cpu"
    stamp = result["date"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    return f"{BENCH_NAME}-{_slug(result['voxtral_model'])}-{_slug(result['tts_model'])}-{device}-{stamp}"


def _turn_label(turn: dict[str, Any]) -> str:
    label = f"turn {turn['index']}"
    if "repeat" in turn:
        label = f"#{turn['repeat'] + 1} {label}"
    return label + (" (cut)" if turn.get("interrupted") else "")


def write_chart(result: dict[str, Any], path: Path) -> Path:
    """Per turn, the waterfall from the real end of speech to the first bot audio, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(n, result["runs"][n]) for n in RUNS if n in result["runs"]]
    rows = max(len(r["turns"]) for _, r in runs) + 1
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(13, 1.2 + 0.45 * rows * len(runs)), sharex=True, squeeze=False
    )
    colors = plt.get_cmap("tab10").colors
    for ax, (name, run) in zip(axes[:, 0], runs, strict=True):
        entries = [(_turn_label(t), t) for t in run["turns"]]
        entries.append(("p50", {k: v["p50"] for k, v in run["summary"].items() if isinstance(v, dict)}))
        for y, (_label, marks) in enumerate(entries):
            for i, (segment, start, stop) in enumerate(SEGMENTS):
                a = 0.0 if start is None else marks.get(start)
                b = marks.get(stop)
                if a is None or b is None or b <= a:
                    continue
                ax.barh(y, b - a, left=a, color=colors[i % 10], label=segment if y == 0 else None)
            v2v = marks.get("voice_to_voice_ms")
            if v2v is not None:
                ax.text(v2v + 5, y, f"{v2v:.0f} ms", va="center", fontsize=8)
        ax.set_yticks(range(len(entries)), [e[0] for e in entries])
        ax.invert_yaxis()
        title = "our word chunker" if name == "chunker" else "pipecat's stock sentence aggregation"
        ax.set_title(f"{title}: {result['voxtral_model']} + {result['tts_model']}", fontsize=10)
    axes[-1, 0].set_xlabel("ms from the real end of user speech to the first bot audio")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.text(
        0.01,
        0.01,
        "p50: each mark's own median; (cut): the user spoke again before or during the answer",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_result(
    result: dict[str, Any], out: Path, name: str | None, chart: bool
) -> tuple[Path, Path | None]:
    """Write ``STEM.json`` (and ``STEM.png``) under ``out``; return both paths."""
    stem = result_stem(result, name)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    png_path = None
    if chart:
        try:
            png_path = write_chart(result, out / f"{stem}.png")
            result["chart"] = str(png_path)
        except ImportError:
            logger.warning(
                "bench: matplotlib is not installed (pip install 'voxtral-pipeline[bench]'): no chart"
            )
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return json_path, png_path


# ----------------------------------------------------------------------------------------------
# Regression check


@dataclass
class Regression:
    figure: str
    baseline: float
    current: float

    @property
    def change(self) -> str:
        pct = f"{(self.current / self.baseline - 1) * 100:+.0f}%" if self.baseline else "new"
        return f"{self.baseline:.1f} -> {self.current:.1f} ms ({pct})"


def load_result(path: Path) -> dict[str, Any]:
    """A result JSON written by the bench. Raises BenchError with a one-line reason."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"no such result file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{path} is not a bench result (unreadable JSON: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict) or not data["figures"]:
        raise BenchError(f"{path} is not a bench result: no 'figures' (written by `voxtral-pipeline bench`)")
    bad = [k for k, v in data["figures"].items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise BenchError(f"{path}: figure {bad[0]!r} is not a number")
    return data


def compare(
    baseline: dict[str, Any], current: dict[str, Any], tolerance: float = 0.15, tolerance_ms: float = 20.0
) -> tuple[list[Regression], list[str]]:
    """Figures worse than the baseline by more than ``tolerance`` (relative) AND ``tolerance_ms``.

    Both must be exceeded, so a 2 ms figure that became 3 ms (+50%) is noise, and so is a 2 s figure
    that grew by 30 ms (+1.5%). Returns the regressions and notes (figures only in one file,
    different models or machines).
    """
    if tolerance < 0 or tolerance_ms < 0:
        raise BenchError("tolerances must not be negative")
    base, cur = baseline["figures"], current["figures"]
    worse = [
        Regression(k, float(base[k]), float(cur[k]))
        for k in sorted(base.keys() & cur.keys())
        if cur[k] - base[k] > max(tolerance * abs(base[k]), tolerance_ms)
    ]
    notes = [f"only in the baseline: {k}" for k in sorted(base.keys() - cur.keys())]
    for key in ("voxtral_model", "tts_model", "reply_tokens"):
        if baseline.get(key) != current.get(key):
            notes.append(f"{key} differs: {baseline.get(key)!r} vs {current.get(key)!r}")
    b_cpu, c_cpu = (baseline.get("machine") or {}).get("cpu"), (current.get("machine") or {}).get("cpu")
    b_gpu, c_gpu = (
        (baseline.get("machine") or {}).get("gpu"),
        (current.get("machine") or {}).get("gpu"),
    )
    if (b_cpu, b_gpu) != (c_cpu, c_gpu):
        notes.append(f"different machine: {b_cpu} / {b_gpu} vs {c_cpu} / {c_gpu}")
    return worse, notes


def format_comparison(
    worse: list[Regression], notes: list[str], tolerance: float, tolerance_ms: float
) -> str:
    rule = f"worse by more than {tolerance * 100:.0f}% and {tolerance_ms:g} ms"
    lines = [f"note: {n}" for n in notes]
    if not worse:
        lines.append(f"no figure got {rule}")
    else:
        lines.append(f"{len(worse)} figure(s) got {rule}:")
        lines += [f"  {r.figure:<40} {r.change}" for r in worse]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line


def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="replay a spoken conversation and time every stage (table, JSON, PNG)",
        description="Replay a multi-turn spoken conversation through the file transport with our "
        "chunker and with pipecat's stock sentence aggregation; print per-stage p50/p95, write JSON "
        "and a PNG waterfall; with --compare, fail if figures got worse than a baseline.",
    )
    p.add_argument("--input", "-i", type=Path, help="conversation WAV/FLAC (default: six packaged questions)")
    p.add_argument("--voxtral-model", "-m", default="dummy:tiny", help="Voxtral spec (default dummy:tiny)")
    p.add_argument("--tts-model", default="dummy:tiny", help="Kokoro spec (default dummy:tiny)")
    p.add_argument("--voice", help="Kokoro voice")
    p.add_argument("--device", help="device for both models: auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--reply-tokens",
        type=int,
        default=48,
        help="tokens per answer, exactly (default 48; 0: the model ends its answers itself)",
    )
    p.add_argument("--repeats", type=int, default=1, help="play the conversation this many times per variant")
    p.add_argument("--no-stock", action="store_true", help="skip the stock sentence-aggregation run")
    p.add_argument("--out", "-o", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--name", help="file name stem for the JSON and PNG (default: models, device, time)")
    p.add_argument("--no-chart", action="store_true", help="write no PNG")
    p.add_argument("--config", "-c", type=Path, help="config file (TOML/YAML/JSON) for everything else")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--vllm", metavar="URL", help="Voxtral on a vLLM server, e.g. http://127.0.0.1:8000/v1 (docs/vllm.md)"
    )
    p.add_argument("--compare", type=Path, metavar="BASELINE.json", help="fail on figures worse than this")
    p.add_argument(
        "--current",
        type=Path,
        metavar="RESULT.json",
        help="with --compare: compare this earlier result instead of running the benchmark",
    )
    p.add_argument("--tolerance", type=float, default=0.15, help="relative tolerance (default 0.15 = 15%%)")
    p.add_argument(
        "--tolerance-ms", type=float, default=20.0, help="absolute tolerance floor in ms (default 20)"
    )
    p.add_argument("--log-level", default="WARNING", help="loguru level (default WARNING)")


def _options(args: argparse.Namespace) -> BenchOptions:
    overrides: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise BenchError(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    if getattr(args, "vllm", None):
        overrides.setdefault("voxtral.backend", "vllm")
        overrides.setdefault("voxtral.vllm.base_url", args.vllm)
    if not 0 <= args.reply_tokens <= 4096:
        raise BenchError(f"--reply-tokens must be between 0 and 4096, got {args.reply_tokens}")
    if not 1 <= args.repeats <= 100:
        raise BenchError(f"--repeats must be between 1 and 100, got {args.repeats}")
    options = BenchOptions(
        voxtral_model=args.voxtral_model,
        tts_model=args.tts_model,
        voice=args.voice,
        device=args.device,
        reply_tokens=args.reply_tokens,
        repeats=args.repeats,
        stock=not args.no_stock,
        out=args.out,
        name=args.name,
        config_file=args.config,
        overrides=overrides,
        chart=not args.no_chart,
    )
    if args.input is not None:
        options.input = args.input
    return options


def _fail(message: str, code: int) -> int:
    print(f"voxtral-pipeline bench: error: {message}", file=sys.stderr)
    return code


def bench_command(args: argparse.Namespace) -> int:
    """Run (or, with --current, load) a result; print it; compare it with --compare's baseline."""
    from voxtral_pipeline.config import ConfigError
    from voxtral_pipeline.models import ModelUnavailableError, parse_model_spec
    from voxtral_pipeline.models.kokoro_onnx import check_kokoro_spec
    from voxtral_pipeline.transports.file import AudioInputError, read_input_audio

    try:
        if args.tolerance < 0 or args.tolerance_ms < 0:
            raise BenchError("--tolerance and --tolerance-ms must not be negative")
        baseline = load_result(args.compare) if args.compare else None
        if args.current is not None:
            if baseline is None:
                raise BenchError("--current needs --compare BASELINE.json")
            current = load_result(args.current)
        else:
            options = _options(args)
            config = build_config(options)
            parse_model_spec(config.voxtral.model, "Voxtral")
            check_kokoro_spec(config.kokoro.model)
            read_input_audio(options.input)
    except (BenchError, ConfigError, ValueError, ModelUnavailableError, AudioInputError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)

    if args.current is None:
        from voxtral_pipeline.logs import keep_log_level

        keep_log_level(args.log_level)
        try:
            current = asyncio.run(run_bench(options))
        except (BenchError, ModelUnavailableError) as e:
            bad_input = isinstance(e, (ModelUnavailableError, NoSpeechError))
            return _fail(str(e), EXIT_BAD_INPUT if bad_input else 1)
        except KeyboardInterrupt:
            return _fail("interrupted", 1)
        print(format_table(current))
        json_path, png_path = write_result(current, options.out, options.name, options.chart)
        print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))

    if baseline is None:
        return EXIT_OK
    try:
        worse, notes = compare(baseline, current, args.tolerance, args.tolerance_ms)
    except BenchError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    print(f"compared with {args.compare}:")
    print(format_comparison(worse, notes, args.tolerance, args.tolerance_ms))
    return EXIT_WORSE if worse else EXIT_OK
