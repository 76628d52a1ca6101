"""Flood benchmark: one WebSocket client floods the bot with audio while another converses.

A real ``voxtral-pipeline run -t websocket`` server on 127.0.0.1 (its own process, dummy models),
so its resident memory and CPU time are the server's alone.

1. warm-up: one session, one turn, closed; after a pause the server's RSS is the warm baseline;
2. ``--rounds`` times, alternating (so a change in the machine's load hits both kinds of block):
   an unflooded block, where the neighbour asks ``--turns`` questions in real time (espeak speech,
   then silence, streaming silence while it waits) and records each turn's voice-to-voice from its
   ``turn-metrics`` events; then a flooded block, the same while a flooder
   (``python -m voxtral_pipeline.testing.flood``, its own process) sends speech as fast as the
   socket takes it, up to ``--flood-audio-secs`` of audio or ``--flood-wall-secs``. The bot
   disconnects a flooder; with ``--reconnect`` it connects again after 0.2 s, every time
   (connection churn on top of the flood), and the bot refuses it while its address is in the
   flood cooldown. The flooder connects from ``--flood-from`` (127.0.0.2), the neighbour from
   127.0.0.1: the cooldown is per address, and two loopback addresses are how two hosts look on one
   machine (with one address the neighbour would be refused with the flooder). Server RSS is
   sampled every 0.25 s in both blocks, its CPU time per block;
3. after: both gone; after ``--settle-secs`` the server's RSS again.

Goals (issue 17): the neighbour's voice-to-voice p50 within 20 % of its unflooded p50 (same run),
and RSS after within 200 MB of the warm baseline.

    python -m benchmarks.flood_bench                      # dummy:tiny, 2 x (3 quiet + 3 flooded turns)
    python -m benchmarks.flood_bench --reconnect          # the flooder comes back every time

Prints a summary and writes JSON (with the machine) to ``benchmarks/results/``. Traffic goes only to
127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from voxtral_pipeline.machine import machine_info
from voxtral_pipeline.testing.flood import FramesClient, cpu_secs, rss_mb, speech_pcm

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = "What is the capital of France?"
SILENCE = bytes(2 * 16000 * 3)  # 3 s after each question: the turn ends, the bot answers
TURN_TIMEOUT = 60.0


def start_server(model: str, new_tokens: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "voxtral_pipeline", "run", "-t", "websocket", "--port", "0",
        "--max-sessions", "4", "--model", model, "--tts-model", model,
        "--set", f"voxtral.max_new_tokens={new_tokens}", "--set", "voxtral.seed=0",
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"WebSocket bot at (ws://127\.0\.0\.1:\d+/\S*)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("the bot server did not start")


async def converse(url: str, pcm: bytes, turns: int) -> list[float | None]:
    """Ask ``turns`` questions in real time; each turn's voice-to-voice in ms (None: unanswered)."""
    async with FramesClient(url) as client:
        for n in range(1, turns + 1):
            await client.stream(pcm + SILENCE)
            await client.wait_for_turns(n, TURN_TIMEOUT)
        return [m.get("voice_to_voice_ms") for m in client.final_metrics()][:turns]


async def sample_rss(pid: int, into: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(rss_mb(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


def p50(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 1) if got else None


async def phase(url: str, pcm: bytes, pid: int, turns: int, flood: list[str] | None, lead: float):
    """One block of neighbour turns, flooded when ``flood`` gives the flooder's arguments.

    Returns (voice-to-voice per turn, server CPU cores used, RSS samples, what the flooder sent).
    """
    rss: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, rss, stop))
    cpu0, t0 = cpu_secs(pid), time.monotonic()
    flooder = None
    if flood is not None:
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voxtral_pipeline.testing.flood", url, *flood,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(lead)  # the flood is on before the neighbour speaks
    v2v = await converse(url, pcm, turns)
    cpu = (cpu_secs(pid) - cpu0) / (time.monotonic() - t0)
    sent: dict[str, Any] = {}
    if flooder is not None:
        out, _ = await flooder.communicate()
        sent = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    stop.set()
    await sampler
    return v2v, cpu, rss, sent


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    server, url = start_server(args.model, args.new_tokens)
    flood_args = [
        "--max-audio-secs",
        str(args.flood_audio_secs),
        "--max-wall-secs",
        str(args.flood_wall_secs),
    ]
    if args.reconnect:
        flood_args.append("--reconnect")
    if args.flood_from:
        flood_args += ["--local-addr", args.flood_from]
    quiet: list[float | None] = []
    flooded: list[float | None] = []
    cpu: dict[str, list[float]] = {"unflooded": [], "flooded": []}
    rss_quiet: list[float] = []
    rss_flood: list[float] = []
    floods: list[dict[str, Any]] = []
    try:
        pcm = speech_pcm(QUESTION)
        await converse(url, pcm, 1)  # warm-up: every lazy import and first inference done
        await asyncio.sleep(args.settle_secs)
        warm = rss_mb(server.pid)
        print(f"warm baseline RSS {warm:.0f} MB", flush=True)
        # Unflooded and flooded blocks alternate, so a change in the machine's load hits both.
        for _ in range(args.rounds):
            v2v, used, rss, _sent = await phase(url, pcm, server.pid, args.turns, None, 0)
            quiet += v2v
            cpu["unflooded"].append(used)
            rss_quiet += rss
            print(f"unflooded voice-to-voice ms: {v2v}", flush=True)
            v2v, used, rss, sent = await phase(
                url, pcm, server.pid, args.turns, flood_args, args.flood_lead_secs
            )
            flooded += v2v
            cpu["flooded"].append(used)
            rss_flood += rss
            floods.append(sent)
            print(f"flooded voice-to-voice ms: {v2v}; flood {sent}", flush=True)
        await asyncio.sleep(args.settle_secs)
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    quiet_p50, flooded_p50 = p50(quiet), p50(flooded)
    ratio = round(flooded_p50 / quiet_p50, 3) if quiet_p50 and flooded_p50 else None
    return {
        "benchmark": "flood_bench",
        "model": args.model,
        "rounds": args.rounds,
        "turns_per_block": args.turns,
        "new_tokens": args.new_tokens,
        "neighbour_v2v_ms": {"unflooded": quiet, "flooded": flooded},
        "neighbour_v2v_p50_ms": {"unflooded": quiet_p50, "flooded": flooded_p50, "ratio": ratio},
        "flood": {
            "blocks": floods,
            "reconnect": args.reconnect,
            "from": args.flood_from or "127.0.0.1",
            "audio_secs_cap_per_block": args.flood_audio_secs,
            "wall_secs_cap_per_block": args.flood_wall_secs,
        },
        "server_cpu_cores": {k: [round(c, 2) for c in v] for k, v in cpu.items()},
        "server_rss_mb": {
            "warm_baseline": round(warm, 1),
            "unflooded_max": round(max(rss_quiet), 1) if rss_quiet else None,
            "flooded_max": round(max(rss_flood), 1) if rss_flood else None,
            "after": round(after, 1),
            "after_minus_warm": round(after - warm, 1),
        },
        "goals": {
            "neighbour_within_20_percent": ratio is not None and ratio <= 1.2,
            "rss_within_200_mb_of_warm": after - warm <= 200,
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny", help="Voxtral and Kokoro spec (default dummy:tiny)")
    p.add_argument("--turns", type=int, default=3, help="questions per block")
    p.add_argument("--rounds", type=int, default=2, help="unflooded + flooded blocks, alternating")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--flood-audio-secs", type=float, default=9000.0, help="cap on each block's flood audio")
    p.add_argument("--flood-wall-secs", type=float, default=30.0, help="cap on each block's flood")
    p.add_argument("--flood-lead-secs", type=float, default=2.0)
    p.add_argument("--settle-secs", type=float, default=5.0)
    p.add_argument("--reconnect", action="store_true", help="the flooder connects again when cut off")
    p.add_argument(
        "--flood-from",
        default="127.0.0.2",
        help="loopback address the flooder connects from ('': 127.0.0.1, the neighbour's own)",
    )
    args = p.parse_args(argv)
    from loguru import logger

    logger.remove()  # pipecat's serializer logs every client event at debug level
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(bench(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "-reconnect" if args.reconnect else ""
    path = RESULTS / f"flood_bench{kind}-{args.model.replace(':', '-')}-cpu-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("neighbour_v2v_p50_ms", "flood", "server_rss_mb", "goals")}, indent=2
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
