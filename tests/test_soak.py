"""Soak: a 300-turn session and 50 sessions in a row leave memory, threads, tasks and caches bounded.

The 300 turns are real speech (espeak) sent as ``UserUtteranceFrame`` straight into the Voxtral
stage and the chunker (the turn stage needs real-time audio: 300 turns of it would take 20
minutes); the 50 sessions go through the real WebSocket server, two of them with a spoken
question answered end to end. The variant with Kokoro in every turn lives in
``benchmarks/soak_bench.py``. Each bound is asserted after a warm-up, so one-time allocations
(model warm-up, allocator arenas) do not count, and every bound is far above what was measured
(see docs/reliability.md) but far below what a leak of one turn's or one session's data would add.
"""

from __future__ import annotations

import asyncio
import threading
import time

from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from tests.reliability_helpers import WAIT_S, Snapshot, WSClient, poll, session_threads
from tests.transport_helpers import dummy_config, question_pcm, running_server, shared_models
from tests.voxtral_fixtures import tiny_bundle_fixture  # noqa: F401
from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import ChunkerConfig, VoxtralConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.server import FINISHED_KEPT
from voxtral_pipeline.testing.speech import needs_espeak, speak

TURNS = int(__import__("os").environ.get("SOAK_TURNS", 300))
WARM_UP_TURNS = min(50, TURNS // 2)
SESSIONS = 50
WARM_UP_SESSIONS = 10
PHRASES = ("What time is it?", "Tell me a joke.", "How far away is the moon?")


class _Ends(FrameProcessor):
    """Counts the answers that reach the end of the stages, and keeps nothing else."""

    def __init__(self):
        super().__init__()
        self.answers = 0
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame):
            self.answers += 1
            self.changed.set()
        await self.push_frame(frame, direction)

    async def wait(self, n: int) -> None:
        async def loop():
            while self.answers < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), WAIT_S)


@needs_espeak
async def test_a_300_turn_session_stays_bounded(tiny_bundle):
    config = VoxtralConfig(
        model="dummy:tiny",
        max_new_tokens=2,
        history_audio_turns=0,
        transcribe_history=False,
        warmup=False,
        kv_cache_sessions=2,
    )
    voxtral = VoxtralLLMService(config, bundle=tiny_bundle)
    ends = _Ends()
    worker = PipelineWorker(
        Pipeline([voxtral, WordChunker(ChunkerConfig()), ends]),
        params=PipelineParams(),
        enable_rtvi=False,
        cancel_on_idle_timeout=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    speech = [float_to_pcm16(speak(p)) for p in PHRASES]
    warm: Snapshot | None = None
    for turn in range(TURNS):
        now = time.time()
        pcm = speech[turn % len(speech)]
        await worker.queue_frame(UserUtteranceFrame(pcm, 16000, now - len(pcm) / 32000, now, now, now))
        await ends.wait(turn + 1)
        if turn + 1 == WARM_UP_TURNS:
            warm = Snapshot.take(voxtral.engine)
    last = Snapshot.take(voxtral.engine)
    engine, stats = voxtral.engine, voxtral.turn_stats
    prefills = [s.prefill_tokens for s in stats]
    held_audio = sum(t.audio is not None for t in voxtral.context.user_turns)
    cached_sessions, cached_tokens = engine.cached_sessions, engine.cached_tokens(voxtral.session_id)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(run, WAIT_S)

    assert warm is not None and len(stats) == TURNS and not any(s.error for s in stats)
    # Memory besides the session's KV cache (which grows with the conversation up to
    # kv_cache_max_tokens, asserted below). Measured 5-70 MB, depending on what else the process
    # ran: tracemalloc finds < 1 MB of Python objects added over 140 turns (the conversation's
    # text and per-turn stats); the rest is the native heap's fragmentation. What a per-turn leak
    # of tensors would add is far more (one turn's mel features alone are 4.6 MB: 1.1 GB here).
    # The audio each turn would leak is checked exactly below (held_audio).
    other = (last.rss_mb - last.cache_mb) - (warm.rss_mb - warm.cache_mb)
    assert other < 100, (warm, last)
    assert last.threads == warm.threads
    assert len(last.tasks) <= len(warm.tasks)
    # The session's context keeps audio only for the turns still heard as audio.
    assert held_audio <= config.history_audio_turns + 2
    # One KV cache, within its bound, and each turn prefilled only its new part (mostly).
    assert cached_sessions == [voxtral.session_id]
    assert 0 < cached_tokens <= config.kv_cache_max_tokens
    # The conversation grew to its window (voxtral.max_history_turns) and no further: the prompt
    # stays inside the model's context however long the session.
    prompts = [s.prompt_tokens for s in stats]
    assert len(voxtral.context.user_turns) <= config.max_history_turns
    assert voxtral.context.dropped_user_turns >= TURNS - config.max_history_turns
    assert max(prompts[-100:]) <= max(prompts[: config.max_history_turns + 1]) + 64, prompts
    # Prefill does not grow with the conversation: a turn computes its own audio, at most the one
    # that just left the audio budget, and a few tokens, except once per window move (a quarter of
    # the window dropped at once changes the prompt's prefix: one full prefill).
    window_moves = (TURNS - config.max_history_turns) // (config.max_history_turns // 4) + 1
    late = prefills[WARM_UP_TURNS:]
    assert sum(p >= 375 + 100 for p in late) <= window_moves, prefills
    assert sorted(late)[len(late) // 2] <= max(prefills[5:WARM_UP_TURNS]) + 64, prefills
    # After its stage is gone the session holds nothing in the engine.
    assert engine.cached_sessions == [], [(e.kind, e.event) for e in engine.events[-8:]]


async def _tts_threads_gone() -> None:
    """A session's TTS thread exits once the synthesis it was running (if any) returns."""
    await poll(lambda: not session_threads([t.name for t in threading.enumerate()]), "TTS threads to exit")


@needs_espeak
async def test_50_sessions_in_a_row_leave_nothing_behind():
    models = await asyncio.to_thread(shared_models)
    config = dummy_config("websocket", **{"transport.server.max_sessions": 1})
    answered = 0
    async with running_server(config) as bot:
        warm: Snapshot | None = None
        for n in range(SESSIONS):
            async with WSClient(bot.url) as client:
                await poll(lambda: bot.sessions, "the session to start")
                if n in (SESSIONS // 2, SESSIONS - 1):  # a whole spoken turn, in real time
                    await client.stream(question_pcm() + bytes(2 * 16000 * 3))
                    await client.wait_for(lambda c: c.count("turn-metrics") > 0, "an answer")
                    answered += 1
                else:  # a client that connects, says nothing much, and goes
                    await client.stream(bytes(2 * 16000 // 4), realtime=False)
            await poll(lambda: not bot.sessions, "the session to end")
            if n + 1 == WARM_UP_SESSIONS:
                await _tts_threads_gone()
                warm = Snapshot.take(models.voxtral._shared_engine)
        await _tts_threads_gone()
        last = Snapshot.take(models.voxtral._shared_engine)
        assert len(bot.finished) == FINISHED_KEPT  # ended sessions kept for /status: a fixed few

    assert answered == 2 and warm is not None
    # A session holds ~25 MB (its turn stage's ONNX models, its pipeline): 40 leaked ones would
    # be a gigabyte.
    assert last.rss_mb - warm.rss_mb < 80, (warm.rss_mb, last.rss_mb)
    assert session_threads(last.threads) == session_threads(warm.threads) == []
    assert len(last.threads) <= len(warm.threads)
    assert len(last.tasks) <= len(warm.tasks)
    assert last.cached_sessions == []  # every session's KV cache released
