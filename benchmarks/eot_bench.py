"""End-of-turn benchmark: cut-off rate against dead air, per turn strategy, on the labelled corpus.

In the spirit of LiveKit's eot-bench. Every utterance of the end-of-turn corpus
(:mod:`voxtral_pipeline.testing.eot_corpus`: espeak-ng and the real Kokoro int8 voice; complete
questions, short answers, numbers, codes, lists, and mid-sentence pauses of 0.3-2 s with and without
fillers) is streamed through pipecat's Silero VAD and a ``UserTurnController`` holding the very
strategies the turn stage builds (:func:`~voxtral_pipeline.processors.turns.build_turn_strategies`)
for each configuration:

- ``cut-off``: the share of utterances whose turn was confirmed before their real end (in a pause
  the user resumes after, or inside speech);
- ``dead air``: real end of speech to the turn confirmed (p50/p95 over the utterances);
- ``pauses <= 1.5 s cut``: thinking pauses (labelled incomplete) the user resumed within 1.5 s,
  yet the turn ended inside them (the goal is none).

It runs faster than real time on a virtual clock: a frame is due when its audio has arrived, and
the time the VAD and the strategies spend on it (Smart Turn inference included, measured here) moves
the clock on, so a decision lands as late as it would live, backlog included. Smart Turn is pure:
a verdict on the same audio is computed once and reused across configurations with its measured
inference time. Each strategy family is swept over its main knob for the curve (PNG).

    python -m benchmarks.eot_bench                     # whole corpus, every family
    python -m benchmarks.eot_bench --quick             # a third of the corpus, the headline configs

Writes ``benchmarks/results/eot_bench-<date>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import TurnConfig
from voxtral_pipeline.machine import machine_info
from voxtral_pipeline.processors.metrics import percentiles
from voxtral_pipeline.testing.eot_corpus import Utterance, cache_root, load_corpus, makeup

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 16000
FRAME = 320  # 20 ms, as the transports deliver it
#: A stop this close before the labelled end is the end itself (the labels' 10 ms resolution).
END_SLACK = 0.03
RESUME_WITHIN = 1.5


# --- Smart Turn verdicts, computed once per distinct audio ---------------------------------------

_PREDICTIONS: dict[str, tuple[dict, float]] = {}
_SIMULATED = [0.0]  # model time to add to the wall time measured since the clock last read it
#: What one Smart Turn verdict costs on the virtual clock: a fixed figure (the median measured, or
#: --smart-turn-ms), so that every strategy pays the same for it whatever else loaded the machine
#: when its verdicts were first computed.
_COST = [0.08]


def _predictions_file() -> Path:
    return cache_root() / "smart_turn_predictions.json"


def _save_predictions() -> None:
    path = _predictions_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_PREDICTIONS))


def _install_prediction_cache() -> None:
    """Memoize Smart Turn v3's ``_predict_endpoint`` (deterministic) by the audio it is given.

    Kept on disk beside the corpus, so a rerun reuses the verdicts and their measured inference
    time (the timing of the run that computed them)."""
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    if _predictions_file().is_file() and not _PREDICTIONS:
        _PREDICTIONS.update({k: tuple(v) for k, v in json.loads(_predictions_file().read_text()).items()})

    original = LocalSmartTurnAnalyzerV3._predict_endpoint
    if getattr(original, "_eot_cached", False):
        return

    def cached(self, audio_array: np.ndarray) -> dict[str, Any]:
        key = hashlib.sha1(np.ascontiguousarray(audio_array[-8 * RATE :]).tobytes()).hexdigest()
        hit = _PREDICTIONS.get(key)
        if hit is not None:
            _SIMULATED[0] += _COST[0]
            return dict(hit[0])
        t0 = time.perf_counter()
        result = original(self, audio_array)
        elapsed = time.perf_counter() - t0
        _PREDICTIONS[key] = (dict(result), elapsed)
        _SIMULATED[0] += _COST[0] - elapsed  # the clock measures the wall time: count the fixed cost
        return result

    cached._eot_cached = True  # type: ignore[attr-defined]
    LocalSmartTurnAnalyzerV3._predict_endpoint = cached  # type: ignore[method-assign]


# --- VAD states, computed once per (utterance, VAD settings) ---------------------------------------


@dataclass
class VADTrace:
    states: list[Any]  # VADState after each frame
    secs: list[float]  # time the analyzer took on each frame
    voice: list[bool]  # TurnVADAnalyzer.hears_voice after each frame


_VAD_CACHE: dict[tuple[str, tuple], VADTrace] = {}


async def _vad_trace(utt: Utterance, pcm: bytes, config: TurnConfig) -> VADTrace:
    from voxtral_pipeline.processors.turns import build_vad

    v = config.vad
    key = (utt.id, (v.confidence, v.start_secs, v.stop_secs, v.min_volume))
    if key not in _VAD_CACHE:
        vad = build_vad(config)  # the turn stage's own (the bot is silent: stock Silero behaviour)
        vad.set_sample_rate(RATE)
        states, secs, voice = [], [], []
        for i in range(0, len(pcm), FRAME * 2):
            t0 = time.perf_counter()
            states.append(await vad.analyze_audio(pcm[i : i + FRAME * 2]))
            secs.append(time.perf_counter() - t0)
            voice.append(vad.hears_voice)
        _VAD_CACHE[key] = VADTrace(states, secs, voice)
    return _VAD_CACHE[key]


# --- One utterance through the strategies -----------------------------------------------------------


@dataclass
class Outcome:
    id: str
    kind: str
    engine: str
    end: float
    stops: list[float] = field(default_factory=list)  # turn confirmed (virtual clock, file seconds)
    cut: bool = False
    dead_air_ms: float | None = None
    pauses_cut: list[float] = field(default_factory=list)  # lengths of the pauses a stop fell in


async def run_utterance(utt: Utterance, config: TurnConfig) -> Outcome:
    from pipecat.audio.vad.vad_analyzer import VADState
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames.frames import (
        InputAudioRawFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.turns.user_turn_controller import UserTurnController
    from pipecat.utils.asyncio.task_manager import TaskManager

    from voxtral_pipeline.processors.turns import build_turn_strategies

    pcm = float_to_pcm16(utt.audio())
    trace = await _vad_trace(utt, pcm, config)
    frame_index = [0]
    built = build_turn_strategies(config, voice_guard=lambda: trace.voice[frame_index[0]])
    controller = UserTurnController(
        user_turn_strategies=built.strategies, user_turn_stop_timeout=built.stop_timeout_secs
    )
    setup = FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None)
    await controller.setup(setup)
    out = Outcome(utt.id, utt.kind, utt.engine, utt.end)
    now = [0.0]

    @controller.event_handler("on_user_turn_stopped")
    async def _stopped(_c, _strategy, _params):
        out.stops.append(now[0])

    vad_state = VADState.QUIET
    v = config.vad
    clock = 0.0
    for k, i in enumerate(range(0, len(pcm), FRAME * 2)):
        frame_index[0] = k
        chunk = pcm[i : i + FRAME * 2].ljust(FRAME * 2, b"\x00")
        arrived = (i // 2 + FRAME) / RATE
        clock = max(clock, arrived) + trace.secs[k]
        _SIMULATED[0] = 0.0
        t0 = time.perf_counter()
        now[0] = clock  # decisions inside this frame land at least here...
        frames: list[Any] = [InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1)]
        state = trace.states[k]
        if state != vad_state and state in (VADState.SPEAKING, VADState.QUIET):
            vad_state = state
            if state == VADState.SPEAKING:
                frames.append(VADUserStartedSpeakingFrame(start_secs=v.start_secs, timestamp=time.time()))
            else:
                frames.append(VADUserStoppedSpeakingFrame(stop_secs=v.stop_secs, timestamp=time.time()))
        n_stops = len(out.stops)
        for frame in frames:
            await controller.process_frame(frame)
        await asyncio.sleep(0)  # timer tasks due now (a zero speech timeout) run within this frame
        clock += time.perf_counter() - t0 + _SIMULATED[0]
        # ...plus the work done on it inline (pipecat's strategy awaits Smart Turn on the frame path).
        out.stops[n_stops:] = [clock for _ in out.stops[n_stops:]]
        verdict = getattr(built.stop, "verdict_task", None)
        if verdict is not None:
            # Ours computes the verdict off the frame path: it lands that much later, while the
            # audio clock runs on. (Frames arriving meanwhile are fed after it: a user resuming
            # within that time would have made the verdict stale live, so this errs towards cut-offs.)
            _SIMULATED[0], n_stops, t1 = 0.0, len(out.stops), time.perf_counter()
            await verdict
            landed = clock + time.perf_counter() - t1 + _SIMULATED[0]
            out.stops[n_stops:] = [landed for _ in out.stops[n_stops:]]
        if out.stops and out.stops[-1] >= utt.end - END_SLACK:
            break
    await controller.cleanup()

    early = [t for t in out.stops if t < utt.end - END_SLACK]
    late = [t for t in out.stops if t >= utt.end - END_SLACK]
    out.cut = bool(early)
    out.dead_air_ms = round((late[0] - utt.end) * 1000, 1) if late else None
    for a, b in utt.pauses:
        if any(
            a - END_SLACK <= t < b + 0.4 for t in early
        ):  # in the pause, or before the VAD heard the resume
            out.pauses_cut.append(round(b - a, 2))
    return out


async def run_config(name: str, config: TurnConfig, corpus: list[Utterance]) -> dict:
    outcomes = [await run_utterance(u, config) for u in corpus]
    dead = [o.dead_air_ms for o in outcomes if o.dead_air_ms is not None]
    n = len(outcomes)
    n_pauses_short = sum(1 for u in corpus for a, b in u.pauses if b - a <= RESUME_WITHIN + 1e-6)
    short_cut = sum(1 for o in outcomes for p in o.pauses_cut if p <= RESUME_WITHIN + 1e-6)
    thinking_cut = sum(
        1 for o in outcomes if o.kind == "filler" for p in o.pauses_cut if p <= RESUME_WITHIN + 1e-6
    )
    by_kind: dict[str, dict] = {}
    for kind in sorted({o.kind for o in outcomes}):
        ks = [o for o in outcomes if o.kind == kind]
        by_kind[kind] = {
            "n": len(ks),
            "cutoff_rate": round(sum(o.cut for o in ks) / len(ks), 4),
            "dead_air_ms": percentiles([o.dead_air_ms for o in ks if o.dead_air_ms is not None]),
        }
    by_engine = {}
    for engine in sorted({o.engine for o in outcomes}):
        es = [o for o in outcomes if o.engine == engine]
        by_engine[engine] = {
            "n": len(es),
            "cutoff_rate": round(sum(o.cut for o in es) / len(es), 4),
            "dead_air_ms": percentiles([o.dead_air_ms for o in es if o.dead_air_ms is not None]),
        }
    return {
        "config": name,
        "settings": config.model_dump(
            mode="json", include={"vad", "smart_turn", "max_silence_secs", "end_of_turn"}
        ),
        "utterances": n,
        "cutoffs": sum(o.cut for o in outcomes),
        "cutoff_rate": round(sum(o.cut for o in outcomes) / n, 4),
        "dead_air_ms": percentiles(dead),
        "no_end": n - len(dead),
        "pauses_le_1_5s": n_pauses_short,
        "pauses_le_1_5s_cut": short_cut,
        "thinking_pauses_le_1_5s": sum(
            1 for u in corpus if u.kind == "filler" for a, b in u.pauses if b - a <= RESUME_WITHIN + 1e-6
        ),
        "thinking_pauses_le_1_5s_cut": thinking_cut,
        "pauses_cut": sorted(p for o in outcomes for p in o.pauses_cut),
        "by_kind": by_kind,
        "by_engine": by_engine,
        "cut_utterances": [o.id for o in outcomes if o.cut],
        "slowest": sorted(
            ({"id": o.id, "dead_air_ms": o.dead_air_ms} for o in outcomes if o.dead_air_ms is not None),
            key=lambda r: -r["dead_air_ms"],
        )[:10],
    }


# --- Strategy families and their knobs --------------------------------------------------------------


def _turns(**overrides: Any) -> TurnConfig:
    data = TurnConfig().model_dump()
    for dotted, value in overrides.items():
        target = data
        *path, last = dotted.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    return TurnConfig.model_validate(data)


def pipecat_default(max_silence_secs: float = 3.0) -> TurnConfig:
    """pipecat 1.14's default: VAD stop 0.2 s, Smart Turn once at the VAD stop, 3 s silence fallback."""
    return _turns(end_of_turn__strategy="once", max_silence_secs=max_silence_secs)


def vad_only(stop_secs: float) -> TurnConfig:
    return _turns(smart_turn=False, vad__stop_secs=stop_secs)


def ours(
    shift: float = 0.0, fallback: float | None = None, context: bool = True, vad_stop: float | None = None
) -> TurnConfig:
    """The default reevaluating schedule, every bar moved by ``shift`` (clipped to [0.01, 0.995]);
    ``vad_stop`` below the first point adds a check there with the first point's bar."""
    base = TurnConfig()
    schedule = [(s, min(0.995, max(0.01, p + shift))) for s, p in base.end_of_turn.schedule]
    if vad_stop is not None and vad_stop < schedule[0][0]:
        schedule.insert(0, (vad_stop, schedule[0][1]))
    return _turns(
        vad__stop_secs=base.vad.stop_secs if vad_stop is None else vad_stop,
        end_of_turn__schedule=schedule,
        end_of_turn__context_pause_secs=base.end_of_turn.context_pause_secs if context else None,
        max_silence_secs=base.max_silence_secs if fallback is None else fallback,
    )


def families(quick: bool) -> dict[str, list[tuple[str, TurnConfig]]]:
    d = TurnConfig()
    head = {
        "pipecat default": [("pipecat default (VAD 0.2 + Smart Turn once + 3 s)", pipecat_default())],
        "ours": [(f"reevaluate (default, fallback {d.max_silence_secs:g} s)", ours())],
    }
    if quick:
        return head
    return {
        "pipecat default": head["pipecat default"]
        + [(f"Smart Turn once + {s:g} s", pipecat_default(s)) for s in (2.0, 1.5, 1.0, 0.6)],
        "ours": head["ours"]
        + [(f"reevaluate, bars {sh:+.2f}", ours(sh)) for sh in (-0.3, -0.15, 0.1, 0.2, 0.3)]
        + [(f"reevaluate, fallback {f:g} s", ours(fallback=f)) for f in (1.5, 2.2)]
        + [("reevaluate, whole turn to Smart Turn", ours(context=False))]
        + [("reevaluate, VAD stop 0.15 s", ours(vad_stop=0.15))],
        "VAD only": [(f"VAD only, stop {s:g} s", vad_only(s)) for s in (0.3, 0.8, 1.5)],
    }


# --- Barge-in: the user talks over the bot ---------------------------------------------------------

#: The bot's answer, heard back through the user's microphone (no echo cancellation) at -10 dB.
BOT_ANSWER = "Paris is the capital of France. It is famous for the Eiffel Tower, its museums and its cafes."
ECHO_DB = -10.0
#: One 20 ms output frame: the output transport plays the frame it is writing to its end (tested in
#: tests/test_barge_in.py), so the last bot sample is heard at most this long after the interruption.
OUTPUT_FRAME_SECS = 0.02


def _bot_voice(engine: str) -> np.ndarray:
    from voxtral_pipeline.testing.eot_corpus import _Renderers

    voice, speed = ("en-us", 170.0) if engine == "espeak" else ("jf_alpha", 1.0)
    x = _Renderers().render(engine, voice, speed, BOT_ANSWER)
    return (x * 10 ** (ECHO_DB / 20)).astype(np.float32)


async def barge_in_run(
    config: TurnConfig,
    warmup: np.ndarray,
    bot: np.ndarray,
    user: np.ndarray | None,
    user_at: float,
    stock: bool = False,
) -> float | None:
    """A user turn (``warmup``), then the bot speaks (``bot``: its echo) and the user's audio starts
    ``user_at`` s in (``user``: its speech onset is at ``user_at``). Returns when, from that onset, a
    turn started while the bot spoke (virtual clock), or None if none did."""
    from pipecat.audio.vad.vad_analyzer import VADState
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        InputAudioRawFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.turns.user_turn_controller import UserTurnController
    from pipecat.utils.asyncio.task_manager import TaskManager

    from voxtral_pipeline.processors.turns import build_turn_strategies, build_vad

    vad = build_vad(config)
    vad.set_sample_rate(RATE)
    built = build_turn_strategies(config, vad=None if stock else vad)
    controller = UserTurnController(
        user_turn_strategies=built.strategies, user_turn_stop_timeout=built.stop_timeout_secs
    )
    await controller.setup(
        FrameProcessorSetup(clock=SystemClock(), task_manager=TaskManager(), pipeline_worker=None)
    )
    starts: list[float] = []
    now = [0.0]

    @controller.event_handler("on_user_turn_started")
    async def _started(_c, _strategy, _params):
        starts.append(now[0])

    mixed = bot.copy()
    if user is not None:
        n = min(len(user), len(mixed) - int(user_at * RATE))
        mixed[int(user_at * RATE) : int(user_at * RATE) + n] += user[:n]
    audio = np.concatenate([warmup, mixed])
    pcm = float_to_pcm16(audio)
    bot_from = len(warmup) / RATE
    state, clock, in_bot = VADState.QUIET, 0.0, False
    v = config.vad
    for i in range(0, len(pcm), FRAME * 2):
        arrived = (i // 2 + FRAME) / RATE
        frames: list[Any] = []
        if not in_bot and arrived > bot_from:
            in_bot = True
            frames.append(BotStartedSpeakingFrame())
            starts.clear()
        t0 = time.perf_counter()
        for f in frames:
            await controller.process_frame(f)
        chunk = pcm[i : i + FRAME * 2].ljust(FRAME * 2, b"\x00")
        new = await vad.analyze_audio(chunk)
        frames = [InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1)]
        if new != state and new in (VADState.SPEAKING, VADState.QUIET):
            state = new
            if new == VADState.SPEAKING:
                frames.append(
                    VADUserStartedSpeakingFrame(start_secs=vad.params.start_secs, timestamp=time.time())
                )
            else:
                frames.append(VADUserStoppedSpeakingFrame(stop_secs=v.stop_secs, timestamp=time.time()))
        clock = max(clock, arrived)
        now[0] = clock
        for f in frames:
            await controller.process_frame(f)
        clock += time.perf_counter() - t0
        if in_bot and starts:
            break
    await controller.cleanup()
    if not (in_bot and starts):
        return None
    return starts[0] - (bot_from + user_at)


async def run_barge_in(
    corpus: list[Utterance], configs: list[tuple[str, TurnConfig, bool, bool]]
) -> list[dict]:
    """Per config: onset to the bot's last sample heard (p50/p95) over the corpus's utterances
    spoken over the bot, and the false interruptions from its echo alone, noise and "mm-hm"."""
    from voxtral_pipeline.testing.eot_corpus import _Renderers

    engines = sorted({u.engine for u in corpus})
    echoes = {e: _bot_voice(e) for e in engines}
    warmups = {e: next(u for u in corpus if u.engine == e and u.kind == "question").audio() for e in engines}
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(int(0.8 * RATE)) * 0.1).astype(np.float32)
    renderer = _Renderers()
    backchannels = [
        (e, renderer.render(e, *(("en-us", 165.0) if e == "espeak" else ("jm_kumo", 1.0)), text))
        for e in engines
        for text in ("Mm-hm.", "Uh-huh.")
    ]
    rows = []
    for name, config, stock, with_echo in configs:
        bots = {e: (echo if with_echo else np.zeros_like(echo)) for e, echo in echoes.items()}
        stops, missed = [], 0
        for u in corpus:
            x = u.audio()
            speech = x[int((u.start - 0.05) * RATE) :]  # from just before its onset
            t = await barge_in_run(config, warmups[u.engine], bots[u.engine], speech, 1.0, stock)
            if t is None:
                missed += 1
            else:
                stops.append(round((t - 0.05 + OUTPUT_FRAME_SECS) * 1000, 1))  # from the onset itself
        echo_false = sum(
            [await barge_in_run(config, warmups[e], bots[e], None, 0.0, stock) is not None for e in engines]
        )
        noise_false = sum(
            [await barge_in_run(config, warmups[e], bots[e], noise, 1.0, stock) is not None for e in engines]
        )
        bc = [
            await barge_in_run(config, warmups[e], bots[e], b, 1.0, stock) is not None
            for e, b in backchannels
        ]
        rows.append(
            {
                "config": name,
                "settings": config.model_dump(mode="json", include={"vad", "interruptions"}),
                "barge_ins": len(corpus),
                "echo_db": ECHO_DB if with_echo else None,
                "stop_ms": percentiles([x for x in stops if x >= 0]),
                # A turn started before the user spoke: the bot's echo interrupted it.
                "interrupted_before_onset": sum(x < 0 for x in stops),
                "not_interrupted": missed,
                "echo_false_interruptions": f"{echo_false}/{len(engines)}",
                "noise_false_interruptions": f"{noise_false}/{len(engines)}",
                "backchannel_interruptions": f"{sum(bc)}/{len(bc)}",
            }
        )
        logger.info(f"barge-in {name}: {rows[-1]['stop_ms']}")
    return rows


def barge_table(rows: list[dict]) -> str:
    lines = [
        f"{'barge-in':<44} {'n':>4} {'stop p50':>9} {'stop p95':>9} {'missed':>6} {'early':>5} {'echo':>5} "
        f"{'noise':>5} {'mm-hm':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r['config']:<44} {r['barge_ins']:>4} {r['stop_ms'].get('p50') or 0:>9.0f} "
            f"{r['stop_ms'].get('p95') or 0:>9.0f} {r['not_interrupted']:>6} "
            f"{r['interrupted_before_onset']:>5} "
            f"{r['echo_false_interruptions']:>5} {r['noise_false_interruptions']:>5} "
            f"{r['backchannel_interruptions']:>6}"
        )
    return "\n".join(lines)


def barge_configs() -> list[tuple[str, TurnConfig, bool, bool]]:
    """(name, config, stock, echo): ``stock`` leaves the VAD as pipecat's (never told the bot
    speaks); ``echo`` plays the bot's voice into the microphone at -10 dB (else perfect echo
    cancellation: the stock VAD cannot tell the echo from the user, it would interrupt itself)."""
    return [
        ("onset 100 ms + echo gate (default), echo", TurnConfig(), False, True),
        ("onset 100 ms + echo gate (default), no echo", TurnConfig(), False, False),
        ("stock Silero start 0.2 s (before), no echo", TurnConfig(), True, False),
        ("stock Silero start 0.2 s (before), echo", TurnConfig(), True, True),
        ("default + min_speech 1000 ms, echo", _turns(interruptions__min_speech_ms=1000), False, True),
    ]


# --- Output -------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = [
        f"{'strategy':<52} {'cut-off':>8} {'dead p50':>9} {'dead p95':>9} {'no end':>6} "
        f"{'pauses<=1.5s cut':>17} {'filler ones':>11}",
    ]
    for r in rows:
        lines.append(
            f"{r['config']:<52} {r['cutoff_rate'] * 100:>7.1f}% {r['dead_air_ms'].get('p50') or 0:>9.0f} "
            f"{r['dead_air_ms'].get('p95') or 0:>9.0f} {r['no_end']:>6} "
            f"{r['pauses_le_1_5s_cut']:>8}/{r['pauses_le_1_5s']:<8} "
            f"{r['thinking_pauses_le_1_5s_cut']:>5}/{r['thinking_pauses_le_1_5s']:<5}"
        )
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, rows), color in zip(curves.items(), ("tab:red", "tab:blue", "tab:gray"), strict=False):
        pts = sorted((r["cutoff_rate"] * 100, r["dead_air_ms"]["p50"], r["dead_air_ms"]["p95"]) for r in rows)
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [p[2] for p in pts], "x--", color=color, alpha=0.6, label=f"{name} p95")
        head = rows[0]
        ax.annotate(
            "default",
            (head["cutoff_rate"] * 100, head["dead_air_ms"]["p50"]),
            textcoords="offset points",
            xytext=(5, 5),
            color=color,
        )
    ax.axvline(5, color="k", lw=0.5, ls=":")
    ax.axhline(300, color="k", lw=0.5, ls=":")
    ax.axhline(800, color="k", lw=0.5, ls=":")
    ax.set_xlabel("cut-off rate (% of utterances)")
    ax.set_ylabel("dead air, real end of speech to turn confirmed (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main_async(args: argparse.Namespace) -> int:
    _install_prediction_cache()
    measured = [v[1] for v in _PREDICTIONS.values()]
    _COST[0] = (
        args.smart_turn_ms / 1000 if args.smart_turn_ms else float(np.median(measured)) if measured else 0.08
    )
    logger.info(f"Smart Turn verdicts cost {_COST[0] * 1000:.0f} ms each on the virtual clock")
    corpus = load_corpus(args.engines.split(",") if args.engines else None)
    if args.quick:
        corpus = corpus[::3]
    t0 = time.perf_counter()
    curves: dict[str, list[dict]] = {}
    for family, configs in ({} if args.barge_in_only else families(args.quick)).items():
        for name, config in configs:
            t1 = time.perf_counter()
            row = await run_config(name, config, corpus)
            row["family"] = family
            curves.setdefault(family, []).append(row)
            _save_predictions()
            logger.info(f"{name}: {time.perf_counter() - t1:.0f} s")
    rows = [r for rs in curves.values() for r in rs]
    # Every other utterance (balanced over engines and kinds): ~100 barge-ins per configuration.
    barge_rows = [] if args.no_barge_in else await run_barge_in(corpus[::2], barge_configs())
    mk = makeup(corpus)
    print(
        f"\neot_bench: {mk['utterances']} utterances {mk['by_engine']}, {mk['pauses']} pauses; "
        f"Silero VAD + Smart Turn v3.2 on CPU, virtual real-time clock ({time.perf_counter() - t0:.0f} s)"
    )
    print(table(rows))
    if barge_rows:
        print("\nbarge-in: speech onset to the last bot sample heard (+1 output frame); false interruptions")
        print(barge_table(barge_rows))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    report = {
        "benchmark": "eot_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "corpus": mk,
        "goal": {"dead_air_p50_ms": 300, "dead_air_p95_ms": 800, "cutoff_rate": 0.05},
        "anchors": {
            "livekit_eot_bench_at_10pct_cutoffs_ms": {
                "turn_detector_v1": 295,
                "smart_turn_v3.2": 739,
                "vad": 1000,
            }
        },
        "smart_turn_inference_ms": percentiles([v[1] * 1000 for v in _PREDICTIONS.values()]),
        "smart_turn_cost_ms_on_clock": round(_COST[0] * 1000, 1),
        "results": rows,
        "barge_in": barge_rows,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"eot_bench-{stamp}.json"
        path.write_text(json.dumps(report, indent=1) + "\n")
        if curves:
            title = f"eot_bench: {mk['utterances']} utterances, cut-off vs dead air"
            plot(curves, path.with_suffix(".png"), title)
        print(f"\nwrote {path}" + (f" and {path.with_suffix('.png').name}" if curves else ""))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a third of the corpus, headline configs only")
    p.add_argument("--engines", default=None, help="espeak,kokoro (default: every available one)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument(
        "--smart-turn-ms", type=float, default=None, help="cost of one verdict (default: the median measured)"
    )
    p.add_argument("--no-barge-in", action="store_true", help="skip the barge-in runs")
    p.add_argument("--barge-in-only", action="store_true", help="skip the end-of-turn runs")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    logger.remove()
    # pipecat warns, once per strategy instance (one per utterance here), that a VAD stop other than
    # 0.2 s voids its STT latency figures, which this pipeline does not use.
    logger.add(sys.stderr, level=args.log_level, filter=lambda r: "stt-benchmark" not in r["message"])
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
