"""Load benchmark: 1, 2, 4 and 8 concurrent sessions on one process's shared Voxtral and Kokoro.

Two bot servers run in this process on the same loaded models (``SharedModels``): one WebSocket,
one WebRTC. Each session is a real client on loopback (the protobuf WebSocket client, or an
aiortc peer sending an Opus track), speaking three espeak questions in real time with pauses
between them, as a person would. Sessions start a random fraction of a second apart, so their
turns overlap and answers compete for the one engine.

Per concurrency level it reports, from the clients' ``turn-metrics`` events (milliseconds from
the real end of the user's speech):

- ``ttft`` (first token) and ``v2v`` (voice-to-voice: first bot audio) p50 / p95;
- ``eot``: end of turn (the turn stage: VAD stop, then Smart Turn), included in both;
- ``answered``: turns answered out of the turns the turn stage detected (``turns``: spoken);

and from the engine (every session's ``turn_stats``):

- ``wait_max_ms``: the longest a turn's request waited from submission to the start of its
  inference (what fairness is about: the engine yields to a waiting turn every
  ``fairness_quantum_tokens`` tokens, so no turn waits behind another session's whole answer);
- ``answer_max_ms``: the longest single answer's generation, i.e. what a first-come-first-served
  engine could make a turn wait behind *each* answer ahead of it;
- ``preemptions``: how often an answer yielded to another session's new turn.

    python -m benchmarks.load_bench                       # dummy:tiny, CPU, 1/2/4/8 sessions
    python -m benchmarks.load_bench --sessions 1 2 --new-tokens 64

Prints a table and writes JSON (with the machine) to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from voxtral_pipeline.audio import float_to_pcm16, resample  # noqa: E402
from voxtral_pipeline.config import PipelineConfig, load_config  # noqa: E402
from voxtral_pipeline.machine import machine_info  # noqa: E402
from voxtral_pipeline.server import BotServer, Session, SharedModels  # noqa: E402
from voxtral_pipeline.testing.bench_cli import add_common_args, warnings_only, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 16000
STEP = RATE // 50  # 20 ms
QUESTIONS = (
    "What is the capital of France?",
    "How far away is the moon?",
    "Can you tell me a short joke?",
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "What time does the sun set in winter?",
)
GAP_SECS = 4.0


def speak(text: str) -> np.ndarray:
    """One phrase from espeak-ng, mono float32 at 16 kHz."""
    import shutil
    import subprocess
    import tempfile

    import soundfile as sf

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("load_bench needs espeak-ng for its speech (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "s.wav"
        subprocess.run([espeak, "-s", "160", "-w", str(wav), text], check=True, capture_output=True)
        data, sr = sf.read(str(wav), dtype="float32")
    return resample(data, sr, RATE)


def conversation_pcm(index: int, turns: int) -> bytes:
    """A session's microphone: ``turns`` questions, each followed by a pause for the answer."""
    parts = [np.zeros(int(0.5 * RATE), np.float32)]
    for t in range(turns):
        parts.append(speak(QUESTIONS[(index + t) % len(QUESTIONS)]))
        parts.append(np.zeros(int(GAP_SECS * RATE), np.float32))
    return float_to_pcm16(np.concatenate(parts))


class RecordingServer(BotServer):
    """A bot server that remembers every session it ran (the real one keeps only the last few)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.all: list[Session] = []

    async def _run_session(self, session: Session) -> None:
        self.all.append(session)
        await super()._run_session(session)


# ---- clients ------------------------------------------------------------------------------------


async def websocket_client(url: str, pcm: bytes, turns: int, events: list[dict], deadline: float) -> None:
    import websockets
    from pipecat.frames.frames import InputTransportMessageFrame, OutputAudioRawFrame
    from pipecat.serializers.protobuf import ProtobufFrameSerializer

    ser = ProtobufFrameSerializer()
    async with websockets.connect(url, max_size=None) as ws:

        async def receive() -> None:
            async for raw in ws:
                frame = await ser.deserialize(raw)
                if isinstance(frame, InputTransportMessageFrame):
                    events.append(frame.message)

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, i in enumerate(range(0, len(pcm), 2 * STEP)):
            chunk = pcm[i : i + 2 * STEP]
            chunk += b"\x00" * (2 * STEP - len(chunk))
            await ws.send(await ser.serialize(OutputAudioRawFrame(chunk, RATE, 1)))
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
        await _until_answered(events, turns, deadline)
        receiver.cancel()


async def webrtc_client(url: str, pcm: bytes, turns: int, events: list[dict], deadline: float) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from voxtral_pipeline.testing.peer import SpeechTrack

    samples = np.frombuffer(pcm, dtype="<i2")

    pc = RTCPeerConnection()
    pc.addTrack(SpeechTrack(pcm))
    channel = pc.createDataChannel("events", ordered=True)
    channel.on("message", lambda message: events.append(json.loads(message)))
    sinks: list[asyncio.Task] = []

    async def drain(track) -> None:
        while True:
            await track.recv()

    pc.on("track", lambda track: sinks.append(asyncio.ensure_future(drain(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "api/offer", json=offer) as res:
                answer = await res.json()
                if res.status != 200:
                    raise RuntimeError(f"offer refused: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.sleep(len(samples) / RATE)
        await _until_answered(events, turns, deadline)
    finally:
        for task in sinks:
            task.cancel()
        await pc.close()


async def _until_answered(events: list[dict], turns: int, deadline: float) -> None:
    """After the microphone ends: until every detected turn has its final metrics (or the deadline)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        detected = sum(1 for e in events if e.get("type") == "user-turn")
        # A turn's final metrics come only when the next turn starts: the last one's first report
        # (sent when the bot stops speaking) is all there is before the client leaves.
        reported = {e["turn"] for e in events if e.get("type") == "turn-metrics"}
        if len(reported) >= turns or (detected and len(reported) >= detected):
            return
        await asyncio.sleep(0.1)


# ---- one level ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


async def run_level(n: int, servers: dict[str, RecordingServer], turns: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + n)
    kinds = ["websocket" if i % 2 == 0 else "webrtc" for i in range(n)]
    events: list[list[dict]] = [[] for _ in range(n)]
    pcms = [conversation_pcm(i, turns) for i in range(n)]
    before = {kind: len(server.all) for kind, server in servers.items()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + len(pcms[0]) / (2 * RATE) + 30

    async def one(i: int) -> None:
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        server = servers[kinds[i]]
        client = websocket_client if kinds[i] == "websocket" else webrtc_client
        await client(server.url, pcms[i], turns, events[i], deadline)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    wall = time.perf_counter() - started
    failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    for server in servers.values():  # every session of this level has ended
        while server.sessions:
            await asyncio.sleep(0.1)

    detected = sum(1 for evs in events for e in evs if e.get("type") == "user-turn")
    finals: list[dict] = []
    for evs in events:
        by_turn = {e["turn"]: e for e in evs if e.get("type") == "turn-metrics"}  # the latest per turn
        finals.extend(by_turn.values())
    ttft = [e["ttft_ms"] for e in finals if e.get("ttft_ms") is not None]
    eot = [e["end_of_turn_ms"] for e in finals if e.get("end_of_turn_ms") is not None]
    v2v = [e["voice_to_voice_ms"] for e in finals if e.get("voice_to_voice_ms") is not None]
    sessions = [s for kind, server in servers.items() for s in server.all[before[kind] :]]
    stats = [t for s in sessions for t in s.voice.voxtral.turn_stats if t.queued_ms is not None]
    waits = [t.queued_ms for t in stats]
    answers = [t.generate_ms for t in stats]
    return {
        "sessions": n,
        "transports": {k: kinds.count(k) for k in set(kinds)},
        "turns_spoken": n * turns,
        "turns_detected": detected,
        "turns_answered": len(v2v),
        "end_of_turn_ms_p50": percentile(eot, 50),
        "end_of_turn_ms_p95": percentile(eot, 95),
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p95": percentile(ttft, 95),
        "v2v_ms_p50": percentile(v2v, 50),
        "v2v_ms_p95": percentile(v2v, 95),
        "wait_ms_p50": percentile(waits, 50),
        "wait_ms_max": max(waits) if waits else None,
        "answer_ms_max": max(answers) if answers else None,
        "answer_ms_median": statistics.median(answers) if answers else None,
        "completion_tokens_median": (
            statistics.median([t.completion_tokens for t in stats]) if stats else None
        ),
        "preemptions": sum(t.preemptions for t in stats),
        "preempted_answers": sum(1 for t in stats if t.preemptions),
        "errors": sum(1 for t in stats if t.error),
        "client_failures": failures,
        "wall_s": round(wall, 1),
    }


# ---- main ---------------------------------------------------------------------------------------


def config_for(kind: str, args: argparse.Namespace) -> PipelineConfig:
    overrides = {
        "voxtral.model": args.model,
        "kokoro.model": args.tts_model,
        "voxtral.device": args.device,
        "kokoro.device": args.device,
        "voxtral.max_new_tokens": args.new_tokens,
        "voxtral.seed": 0,
        "metrics.log_turns": False,
        "transport.kind": kind,
        "transport.server.port": 0,
        "transport.server.max_sessions": max(args.sessions),
    }
    if args.vllm:  # Voxtral on a vLLM server: the bot processes hold only Kokoro and the turn stage
        overrides.update({"voxtral.backend": "vllm", "voxtral.vllm.base_url": args.vllm})
    return load_config(overrides=overrides, environ={})


def print_table(levels: list[dict[str, Any]]) -> None:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    head = (
        f"{'sessions':>8} {'turns':>5} {'answered':>9} {'eot p50':>8} {'eot p95':>8} {'ttft p50':>9} "
        f"{'ttft p95':>9} {'v2v p50':>8} {'v2v p95':>8} {'wait max':>9} {'answer max':>11} {'preempt':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in levels:
        print(
            f"{r['sessions']:>8} {r['turns_spoken']:>5} {r['turns_answered']:>4}/{r['turns_detected']:<4} "
            f"{f(r['end_of_turn_ms_p50']):>8} {f(r['end_of_turn_ms_p95']):>8} {f(r['ttft_ms_p50']):>9} "
            f"{f(r['ttft_ms_p95']):>9} {f(r['v2v_ms_p50']):>8} {f(r['v2v_ms_p95']):>8} "
            f"{f(r['wait_ms_max']):>9} {f(r['answer_ms_max']):>11} {r['preemptions']:>8}"
        )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    models = await asyncio.to_thread(SharedModels.load, config_for("websocket", args))
    servers = {kind: RecordingServer(config_for(kind, args), models) for kind in ("websocket", "webrtc")}
    for server in servers.values():
        await server.start()
    levels = []
    try:
        for n in args.sessions:
            logger.info(f"load_bench: {n} concurrent session(s)")
            levels.append(await run_level(n, servers, args.turns, args.seed))
    finally:
        for server in servers.values():
            await server.stop()
    engine = getattr(models.voxtral, "_shared_engine", None)
    return {
        "benchmark": "load_bench",
        "model": args.model,
        "tts_model": args.tts_model,
        "device": args.device,
        "new_tokens": args.new_tokens,
        "fairness_quantum_tokens": engine.quantum_tokens if engine else None,
        "turns_per_session": args.turns,
        "machine": machine_info(),
        "levels": levels,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--turns", type=int, default=3, help="questions per session")
    p.add_argument("--new-tokens", type=int, default=32, help="voxtral.max_new_tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm", metavar="URL", help="Voxtral on this vLLM server (docs/vllm.md)")
    args = p.parse_args()
    warnings_only()
    results = asyncio.run(main_async(args))
    print_table(results["levels"])
    write_results(results, RESULTS, "load_bench", args)


if __name__ == "__main__":
    main()
