"""Turn taking: end-of-turn delay, early cut-offs, speculative start and barge-in stop time.

A scripted conversation made with espeak-ng (complete questions, questions with a thinking pause
in the middle, short acknowledgements) is streamed in real time through the whole pipeline (file
transport, turn stage, Voxtral, chunker, Kokoro; dummy models by default, so the numbers are the
turn taking's own, not a model's) once per turn configuration. Against the script's known speech
(its real start and end, found in the audio) it measures:

- ``eot_ms``: end-of-turn delay, from the real end of an utterance's speech to the confirmed end of
  its turn (p50/p95);
- ``early``: wrong early cut-offs, utterances meant as one turn whose turn ended inside them (at a
  thinking pause);
- ``missed``: utterances that never became a turn (e.g. below ``turns.min_utterance_ms``);
- ``fallback``: turns Smart Turn kept judging incomplete, ended by ``turns.max_silence_secs``; ``ST``
  columns are the same figures over the other turns (ended by Smart Turn's "complete");
- with speculative start: the time saved per turn (first token out that much sooner), the
  effective end-of-turn delay (``eot_ms`` minus the time saved: when the inference that answered the
  turn had in effect started) and how many speculative inferences were discarded because the user
  went on speaking.

A second script measures barge-in: the user talks over a long bot answer (held back by a
:class:`~voxtral_pipeline.transports.file.PlaybackCue` until the bot has spoken for a while), five
times in a row; ``stop_ms`` is the real onset of the user's speech to the last bot audio sample
heard (from the file transport's recording, which places every bot sample when it was heard).

    python benchmarks/turn_bench.py                 # baseline and speculative; barge-in
    python benchmarks/turn_bench.py --quick         # fewer utterances

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from voxtral_pipeline.config import PipelineConfig, TurnConfig, load_config
from voxtral_pipeline.machine import machine_info
from voxtral_pipeline.processors.metrics import percentiles
from voxtral_pipeline.testing.speech import speak, write_wav

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 16000

#: (kind, parts): a part is a phrase, or a pause in seconds inside the utterance.
SCRIPT: list[tuple[str, tuple[str | float, ...]]] = [
    ("question", ("What is the capital of France?",)),
    ("pause", ("I would like to order", 1.0, "a large pizza with mushrooms.")),
    ("ack", ("Yes.",)),
    ("question", ("How many legs does a spider have?",)),
    ("pause", ("Can you tell me about the", 1.0, "history of Rome?")),
    ("ack", ("Okay.",)),
    ("question", ("Can you recommend a good book to read?",)),
    ("pause", ("My favourite colour is", 1.0, "blue.")),
    ("ack", ("Thanks.",)),
    ("question", ("What time does the museum open tomorrow?",)),
    ("pause", ("So the thing is, um", 1.0, "I need a new phone.")),
    ("ack", ("Sure.",)),
    ("question", ("Why is the sky blue?",)),
    ("pause", ("What I want to know is", 0.8, "how far away the moon is.")),
]
BARGE_INS = [
    "Tell me about the history of Rome instead.",
    "Actually what is the weather like today?",
    "Hold on I have another question for you.",
    "Never mind let us talk about music.",
    "Sorry can you say that more slowly?",
]


@dataclass
class Utterance:
    kind: str
    text: str
    start: float  # real speech start and end in the input file (seconds)
    end: float


def _speech_bounds(samples: np.ndarray) -> tuple[int, int]:
    loud = np.nonzero(np.abs(samples) > 0.02)[0]
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, len(samples))


def build_script(
    script: list[tuple[str, tuple[str | float, ...]]], gap_secs: float
) -> tuple[np.ndarray, list[Utterance]]:
    """The conversation's audio and where each utterance's speech really is."""
    parts, utterances, pos = [np.zeros(int(0.5 * RATE), np.float32)], [], int(0.5 * RATE)
    for kind, pieces in script:
        start = end = None
        for piece in pieces:
            audio = np.zeros(int(piece * RATE), np.float32) if isinstance(piece, float) else speak(piece)
            if not isinstance(piece, float):
                a, b = _speech_bounds(audio)
                start = pos + a if start is None else start
                end = pos + b
            parts.append(audio)
            pos += len(audio)
        text = " ".join(p for p in pieces if isinstance(p, str))
        utterances.append(Utterance(kind, text, start / RATE, end / RATE))
        parts.append(np.zeros(int(gap_secs * RATE), np.float32))
        pos += int(gap_secs * RATE)
    return np.concatenate(parts), utterances


def _config(wav: Path, turns: dict[str, Any], max_new_tokens: int) -> PipelineConfig:
    overrides = {
        "transport.file.input": str(wav),
        "voxtral.model": "dummy:tiny",
        "voxtral.max_new_tokens": max_new_tokens,
        "voxtral.seed": 0,
        "voxtral.transcribe_history": False,
        "kokoro.model": "dummy:tiny",
        "metrics.log_turns": False,
        **{f"turns.{k}": v for k, v in turns.items()},
    }
    return load_config(overrides=overrides, environ={})


async def _run(config: PipelineConfig, models, cues=None, min_new_tokens: int = 0):
    from voxtral_pipeline.pipeline import build_pipeline
    from voxtral_pipeline.processors.kokoro import KokoroTTSService
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService
    from voxtral_pipeline.transports.file import FileTransport

    transport = FileTransport(config.transport.file, cues=cues)
    voxtral = VoxtralLLMService(config.voxtral, bundle=models.voxtral, min_new_tokens=min_new_tokens)
    tts = KokoroTTSService(config.kokoro, bundle=models.kokoro)
    voice = build_pipeline(config, transport, voxtral=voxtral, tts=tts)
    report = await voice.run()
    return transport, voice, report


async def bench_turns(
    name: str, turns: dict[str, Any], wav: Path, utterances: list[Utterance], models
) -> dict:
    """End-of-turn delay and early cut-offs over the script, for one turn configuration."""
    config = _config(wav, turns, max_new_tokens=8)
    transport, voice, report = await _run(config, models)
    origin = transport.stream_start
    ends = sorted(r.turn_end_time - origin for r in voice.metrics.turns)
    # Speculation: the inference that answered the turn started this much before the turn's end.
    saved_at = {
        round(r.turn_end_time - origin, 6): (t.get("speculation_saved_ms") or 0.0)
        for r, t in zip(voice.metrics.turns, report["turns"], strict=False)
    }
    delays, effective, early, missed, rows = [], [], 0, 0, []
    for i, u in enumerate(utterances):
        start, end = transport.stream_secs(u.start), transport.stream_secs(u.end)
        following = (
            transport.stream_secs(utterances[i + 1].start) if i + 1 < len(utterances) else float("inf")
        )
        cut = [t for t in ends if start < t < end - 0.02]
        after = [t for t in ends if end - 0.02 <= t < following]
        delay = round((after[0] - end) * 1000, 1) if after else None
        early += bool(cut)
        missed += not (cut or after)
        eff = None
        if delay is not None:
            delays.append(delay)
            eff = round(delay - saved_at.get(round(after[0], 6), 0.0), 1)
            effective.append(eff)
        rows.append(
            {"kind": u.kind, "text": u.text, "eot_ms": delay, "effective_eot_ms": eff, "early_cut": bool(cut)}
        )
    saved = [t["speculation_saved_ms"] for t in report["turns"] if t.get("speculation_saved_ms") is not None]
    detect = [t.get("turn_detect_ms") for t in report["turns"]]
    v2v = [t["voice_to_voice_ms"] for t in report["turns"]]
    by_kind = {
        kind: percentiles([r["eot_ms"] for r in rows if r["kind"] == kind])
        for kind in ("question", "pause", "ack")
    }
    # Turns Smart Turn judged complete, apart from those that waited out turns.max_silence_secs.
    fallback = config.turns.max_silence_secs * 1000
    return {
        "config": name,
        "turns_settings": turns,
        "utterances": len(utterances),
        "turns": len(ends),
        "eot_ms": percentiles(delays),
        "silence_fallbacks": sum(d >= fallback for d in delays),
        "eot_ms_smart_turn": percentiles([d for d in delays if d < fallback]),
        "effective_eot_ms_smart_turn": percentiles(
            [e for d, e in zip(delays, effective, strict=True) if d < fallback]
        ),
        "effective_eot_ms": percentiles(effective),
        "eot_ms_by_kind": by_kind,
        "early_cutoffs": early,
        "missed": missed,
        "voice_to_voice_ms": percentiles(v2v),
        "turn_detect_ms": percentiles(detect),
        "speculation_saved_ms": percentiles(saved) if turns.get("speculative") else None,
        "speculation": report.get("speculation"),
        "per_utterance": rows,
    }


async def bench_barge_in(name: str, turns: dict[str, Any], models, bot_speaking_secs: float = 1.0) -> dict:
    """Barge-in stop time: the user talks over a long answer, five times in a row."""
    from voxtral_pipeline.transports.file import PlaybackCue

    gap = np.zeros(int(1.0 * RATE), np.float32)
    parts, onsets = [np.zeros(int(0.5 * RATE), np.float32), speak("What is the capital of France?"), gap], []
    for text in BARGE_INS:
        pos = sum(len(p) for p in parts)
        audio = speak(text)
        onsets.append((pos + _speech_bounds(audio)[0]) / RATE)
        parts += [audio, gap]
    with tempfile.TemporaryDirectory() as d:
        wav = write_wav(Path(d) / "barge.wav", np.concatenate(parts))
        config = _config(wav, turns, max_new_tokens=60)
        cues = [PlaybackCue(at_secs=t - 0.1, bot_speaking_secs=bot_speaking_secs) for t in onsets]
        transport, _voice, report = await _run(config, models, cues=cues, min_new_tokens=60)
    spans = sorted(transport.bot_audio_spans())
    origin = transport.stream_start
    stops = []
    for onset_file in onsets:
        onset = origin + transport.stream_secs(onset_file)
        # The run of continuous bot audio playing at the onset: its end is the last sample heard.
        run_end = None
        for s, e in spans:
            if e <= onset:
                continue
            if run_end is None:
                if s > onset:
                    break  # the bot was not speaking at the onset
                run_end = e
            elif s - run_end < 0.06:
                run_end = e
            else:
                break
        stops.append(round(max(0.0, (run_end or onset) - onset) * 1000, 1))
    reported = [t["barge_in_ms"] for t in report["turns"] if t.get("barge_in_ms") is not None]
    return {
        "config": name,
        "turns_settings": turns,
        "barge_ins": len(onsets),
        "interrupted_turns": sum(bool(t["interrupted"]) for t in report["turns"]),
        "stop_ms": percentiles(stops),
        "stop_ms_each": stops,
        "reported_barge_in_ms": percentiles(reported),
    }


def _p(d: dict | None, key: str) -> str:
    v = None if d is None else d.get(key)
    return "-" if v is None else f"{v:.0f}"


def table(turn_rows: list[dict], barge_rows: list[dict]) -> str:
    lines = [
        f"{'config':<30} {'utt':>4} {'turns':>5} {'eot p50':>8} {'eot p95':>8} {'early':>6} {'missed':>6} "
        f"{'fallback':>8} {'ST eot p50':>10} {'detect p50':>10} {'v2v p50':>8} {'saved p50':>9} "
        f"{'eff.eot p50':>11} {'ST eff p50':>10} {'discarded':>9}",
    ]
    for r in turn_rows:
        spec = r["speculation"] or {}
        lines.append(
            f"{r['config']:<30} {r['utterances']:>4} {r['turns']:>5} {_p(r['eot_ms'], 'p50'):>8} "
            f"{_p(r['eot_ms'], 'p95'):>8} {r['early_cutoffs']:>6} {r['missed']:>6} "
            f"{r['silence_fallbacks']:>8} {_p(r['eot_ms_smart_turn'], 'p50'):>10} "
            f"{_p(r['turn_detect_ms'], 'p50'):>10} {_p(r['voice_to_voice_ms'], 'p50'):>8} "
            f"{_p(r['speculation_saved_ms'], 'p50'):>9} {_p(r['effective_eot_ms'], 'p50'):>11} "
            f"{_p(r['effective_eot_ms_smart_turn'], 'p50'):>10} "
            f"{spec.get('discarded', '-') if r['turns_settings'].get('speculative') else '-':>9}"
        )
    lines += ["", f"{'barge-in config':<30} {'n':>4} {'stop p50':>9} {'stop p95':>9} {'reported p50':>12}"]
    for r in barge_rows:
        lines.append(
            f"{r['config']:<30} {r['barge_ins']:>4} {_p(r['stop_ms'], 'p50'):>9} "
            f"{_p(r['stop_ms'], 'p95'):>9} {_p(r['reported_barge_in_ms'], 'p50'):>12}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    from voxtral_pipeline.server import SharedModels

    script = SCRIPT[:6] if args.quick else SCRIPT
    models = await asyncio.to_thread(SharedModels.load, _config(Path("x.wav"), {}, 8))
    pipecat = {"end_of_turn.strategy": "once", "max_silence_secs": 3.0}
    turn_configs = [
        ("pipecat default (Smart Turn once, 3 s)", {**pipecat, "speculative": False}),
        ("pipecat default + speculative", {**pipecat, "speculative": True}),
        ("reevaluate (default)", {"speculative": False}),
        ("reevaluate + speculative (default)", {"speculative": True}),
    ]
    # Barge-in runs with the defaults (speculative start included) but for the knob named.
    barge_configs = [
        ("onset 100 ms, echo gate (default)", {}),
        ("onset 200 ms (= vad start, before)", {"interruptions.onset_ms": 200}),
        ("onset 100 ms, min_speech 400ms", {"interruptions.min_speech_ms": 400}),
    ]
    if args.quick:
        turn_configs, barge_configs = turn_configs[::2], barge_configs[:2]
    if args.barge_in_only:
        turn_configs = []
    audio, utterances = build_script(script, args.gap_secs) if turn_configs else (None, [])
    turn_rows, barge_rows = [], []
    with tempfile.TemporaryDirectory() as d:
        wav = write_wav(Path(d) / "turns.wav", audio) if turn_configs else None
        for name, turns in turn_configs:
            t0 = time.perf_counter()
            turn_rows.append(await bench_turns(name, turns, wav, utterances, models))
            logger.info(f"{name}: {time.perf_counter() - t0:.0f} s")
    if not args.no_barge_in:
        for name, turns in barge_configs:
            barge_rows.append(await bench_barge_in(name, turns, models))
    print(
        f"\nturn_bench: {len(utterances)} scripted utterances (espeak-ng), dummy models, "
        f"defaults {TurnConfig().model_dump(include={'vad', 'max_silence_secs', 'min_utterance_ms'})}"
    )
    print(table(turn_rows, barge_rows))
    if args.verbose:
        for r in turn_rows:
            print(f"\n{r['config']}")
            for u in r["per_utterance"]:
                flag = "EARLY CUT " if u["early_cut"] else ""
                eff = _p(u, "effective_eot_ms")
                print(f"  {u['kind']:<9} {_p(u, 'eot_ms'):>6} ms (eff. {eff:>5}) {flag}{u['text']}")
    report = {
        "benchmark": "turn_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {"voxtral": "dummy:tiny", "kokoro": "dummy:tiny"},
        "gap_secs": args.gap_secs,
        "machine": machine_info(),
        "turn_defaults": TurnConfig().model_dump(mode="json"),
        "turn_taking": turn_rows,
        "barge_in": barge_rows,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"turn_bench-dummy-cpu-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the first 6 utterances only")
    p.add_argument("--gap-secs", type=float, default=5.0, help="silence after each utterance")
    p.add_argument("--no-barge-in", action="store_true")
    p.add_argument("--barge-in-only", action="store_true", help="skip the end-of-turn runs")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--verbose", action="store_true", help="print every utterance's numbers")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    try:
        import kokoro  # noqa: F401  (it configures loguru on import: configure ours after it)
    except ImportError:
        pass

    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
