"""Faults injected through the real classes: each costs one turn (or one session) at most, nothing leaks.

- the model raising mid-answer, and running out of memory: a non-fatal ``ErrorFrame``, a spoken
  apology, the half-written KV cache dropped (every cache on OOM), the next turn exact;
- a session released while its answer still runs keeps no cache behind;
- Kokoro failing on one chunk: the chunk's words still reach the client, the next chunk is spoken;
- a client gone mid-answer: generation and TTS cancelled, the session's cache, tasks and TTS
  thread freed;
- vLLM down, then back: an error per turn while down, answers again once it returns;
- Daily refusing the join: one ``DailyError`` with Daily's reason, the session wound down.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import torch
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline

from tests.reliability_helpers import Snapshot, WSClient, poll, session_threads
from tests.transport_helpers import dummy_config, importable, question_pcm, running_server, shared_models
from tests.vllm_protocol_server import VLLMProtocolServer
from tests.voxtral_fixtures import (  # noqa: F401
    WAIT_TIMEOUT_S,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
)
from voxtral_pipeline.config import ChunkerConfig, KokoroConfig, VoxtralConfig
from voxtral_pipeline.engine import EngineRequest
from voxtral_pipeline.frames import DisplayTextFrame
from voxtral_pipeline.languages import language
from voxtral_pipeline.models.voxtral import ConversationTurn, audio_content_part, build_conversation
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.kokoro import KokoroTTSService
from voxtral_pipeline.processors.voxtral import VoxtralEngine, VoxtralLLMService
from voxtral_pipeline.testing.speech import needs_espeak

pytest_plugins = ["tests.kokoro_fixtures"]  # fixtures: kokoro_tiny

OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def _conversation(seed: int) -> list[dict]:
    import numpy as np

    audio = (0.1 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32)
    return build_conversation([ConversationTurn("user", audio=audio_content_part(audio))], "Be brief.")


def _answer(engine: VoxtralEngine, session: str, seed: int, **kw):
    request = EngineRequest(session, conversation=_conversation(seed), max_new_tokens=6, **kw)
    return engine.submit(request).result(WAIT_TIMEOUT_S)


# ---- the engine --------------------------------------------------------------------------------


def test_a_failed_answer_drops_its_own_cache_and_oom_drops_them_all(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    engine = VoxtralEngine(tiny_bundle)
    plain = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        for session, seed in (("a", 1), ("b", 2)):
            _answer(engine, session, seed)
        assert sorted(engine.cached_sessions) == ["a", "b"]

        # A failure mid-decode: generate() has written part of a's cache; only a's entry goes.
        spy.fail_at_forward = (3, RuntimeError("synthetic decode failure"))
        with pytest.raises(RuntimeError, match="synthetic"):
            _answer(engine, "a", 1)
        assert engine.cached_sessions == ["b"]
        again = _answer(engine, "a", 1)
        assert again.token_ids == _answer(plain, "a", 1).token_ids  # nothing stale was reused

        # Out of memory: every cache is dropped (and the CUDA allocator emptied when on CUDA).
        emptied: list[bool] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
        spy.fail_at_forward = (2, OOM)
        with pytest.raises(torch.OutOfMemoryError):
            _answer(engine, "c", 3)
        monkeypatch.undo()  # the spy too: the engine must work with the untouched model
        assert engine.cached_sessions == [] and emptied == [True]
        assert _answer(engine, "b", 2).token_ids == _answer(plain, "b", 2).token_ids
        assert [e.event for e in engine.events].count("error") == 2
    finally:
        engine.close()
        plain.close()


def test_a_session_released_mid_answer_keeps_no_cache(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    spy.gate_at_forward = 3
    engine = VoxtralEngine(tiny_bundle)
    try:
        future = engine.submit(EngineRequest("gone", conversation=_conversation(5), max_new_tokens=8))
        assert spy.gate_reached.wait(WAIT_TIMEOUT_S)
        engine.release_session("gone")  # the stage's cleanup, while the engine thread still decodes
        spy.gate.set()
        assert future.result(WAIT_TIMEOUT_S).completion_tokens == 8
        assert engine.cached_sessions == []
        _answer(engine, "gone", 5)  # a session id used again is cached again
        assert engine.cached_sessions == ["gone"]
    finally:
        engine.close()


# ---- the stages of one reply: Voxtral -> chunker -> Kokoro --------------------------------------


def _reply_stages(tiny_bundle, kokoro_bundle, **voxtral) -> tuple[VoxtralLLMService, Pipeline]:
    settings = {"max_new_tokens": 12, **voxtral}
    config = VoxtralConfig(
        model="dummy:tiny", temperature=0.0, transcribe_history=False, warmup=False, **settings
    )
    service = VoxtralLLMService(config, bundle=tiny_bundle)
    tts = KokoroTTSService(KokoroConfig(model="dummy:tiny", device="cpu"), bundle=kokoro_bundle)
    return service, Pipeline([service, WordChunker(ChunkerConfig()), tts])


def _after(frames, marker) -> list:
    return frames[frames.index(marker) + 1 :]


async def test_model_failure_and_oom_mid_answer_are_apologized_for_and_the_next_turn_works(
    tiny_bundle, kokoro_tiny, monkeypatch
):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service, stages = _reply_stages(tiny_bundle, kokoro_tiny)
    async with StageHarness(stages) as h:
        spy.fail_at_forward = (2, RuntimeError("synthetic decode failure"))  # after the first token
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_down(count(TTSStoppedFrame, 2))  # the partial answer, then the apology

        spy.fail_at_forward = (1, OOM)  # during the prefill: nothing said yet
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_up(count(ErrorFrame, 2))
        await h.wait_down(count(TTSStoppedFrame, 3))
        assert service.engine.cached_tokens(service.session_id) == 0  # freed with every other cache

        await h.send(make_utterance(1.0, seed=3))
        await h.wait_down(count(LLMFullResponseEndFrame, 3))
        await h.wait_down(count(TTSStoppedFrame, 4))

    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 2 and not any(e.fatal for e in errors)
    assert "Voxtral generation failed on turn 0" in errors[0].error and "synthetic" in errors[0].error
    assert "ran out of memory on turn 1" in errors[1].error and "OutOfMemoryError" in errors[1].error
    # Each apology went through the chunker to Kokoro and was spoken: its text, then its audio.
    apologies = [f for f in h.down if isinstance(f, TTSTextFrame) and "Sorry" in f.text]
    assert len(apologies) == 2 and language("en").apology.startswith(apologies[0].text.strip())
    for apology in apologies:
        assert any(isinstance(f, TTSAudioRawFrame) for f in _after(h.down, apology))
    stats = service.turn_stats
    assert [bool(s.error) for s in stats] == [True, True, False]
    assert stats[2].completion_tokens > 0 and stats[2].text
    # The apology is not the model's: the next prompt holds what the model itself said.
    assert all(language("en").apology not in t.text for t in service.history if t.role == "assistant")


@pytest.mark.parametrize(("code", "error_reply"), [("fr", None), ("es", None), ("en", "")])
async def test_the_apology_is_in_the_session_language_or_none(tiny_bundle, monkeypatch, code, error_reply):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    config = VoxtralConfig(
        model="dummy:tiny", temperature=0.0, transcribe_history=False, warmup=False, language=code
    )
    service = VoxtralLLMService(config, bundle=tiny_bundle)
    service.error_reply = error_reply
    async with StageHarness(service) as h:
        spy.fail_at_forward = (1, RuntimeError("synthetic prefill failure"))
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_up(count(ErrorFrame))
        await h.wait_down(count(LLMFullResponseEndFrame))
    spoken = [f.text for f in h.down if isinstance(f, TTSSpeakFrame)]
    assert spoken == ([language(code).apology] if error_reply is None else [])


async def test_tts_failing_on_one_chunk_still_shows_its_words_and_speaks_the_next(
    tiny_bundle, kokoro_tiny, monkeypatch
):
    real_infer = kokoro_tiny.infer
    calls: list[str] = []

    def infer(phonemes: str, speed: float = 1.0):
        calls.append(phonemes)
        if len(calls) == 1:
            raise RuntimeError("synthetic synthesis failure")
        return real_infer(phonemes, speed)

    monkeypatch.setattr(kokoro_tiny, "infer", infer)
    service, stages = _reply_stages(tiny_bundle, kokoro_tiny, max_new_tokens=40)
    async with StageHarness(stages) as h:
        await h.send(make_utterance(1.0, seed=4))
        await h.wait_down(count(TTSStoppedFrame))
    monkeypatch.undo()

    answer = service.turn_stats[0].text
    shown = "".join(f.text for f in h.down if isinstance(f, DisplayTextFrame))
    assert shown.split() == answer.split()  # every word reached the client, the failed chunk's too
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and not errors[0].fatal and "could not speak" in errors[0].error
    assert len(calls) >= 2, "the reply was one chunk: nothing after the failure to speak"
    assert any(isinstance(f, TTSAudioRawFrame) for f in h.down)  # the next chunks were spoken
    assert not [f for f in h.down if isinstance(f, LLMTextFrame) and f.text == language("en").apology]


# ---- a client gone mid-answer -------------------------------------------------------------------


@needs_espeak
async def test_client_gone_mid_answer_cancels_and_frees_everything(monkeypatch):
    models = await asyncio.to_thread(shared_models)
    config = dummy_config("websocket", **{"voxtral.max_new_tokens": 64, "voxtral.warmup": False})
    async with running_server(config) as bot:
        before = Snapshot.take()
        spy = GenerateSpy(models.voxtral.model, monkeypatch)
        spy.gate_at_forward = 2  # hold the answer after its first token, until the client is gone
        answers_seen: list[int] = []
        spy.gate_when = lambda ids: (answers_seen.append(len(ids)), len(answers_seen) == 1)[1]
        async with WSClient(bot.url) as client:
            # Real time: the turn stage needs audio paced like a microphone's.
            await client.stream(question_pcm() + bytes(32000), realtime=True)
            await poll(spy.gate_reached.is_set, "the answer to start")
            session = next(iter(bot.sessions.values()))
        await poll(lambda: not bot.sessions, "the session to end with its client")
        spy.gate.set()  # the engine thread goes on: it must stop at once and keep nothing
        engine = models.voxtral._shared_engine
        await poll(lambda: not engine.busy, "the engine to finish")
        voxtral, tts = session.voice.voxtral, session.voice.tts
        answers = [e for e in engine.events if e.session_id == voxtral.session_id and e.kind == "answer"]
        assert [e.event for e in answers] == ["start", "cancelled"] and answers[-1].tokens <= 2
        assert voxtral.session_id not in engine.cached_sessions
        assert voxtral.turn_stats[0].interrupted
        assert tts._executor is None  # the TTS thread pool was shut down
        await poll(
            lambda: (
                session_threads([t.name for t in threading.enumerate()]) == session_threads(before.threads)
            ),
            "the session's TTS thread to exit",
        )
        await poll(lambda: len(Snapshot.take().tasks) <= len(before.tasks), "the session's tasks to end")


# ---- vLLM down, then back ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_vllm_down_then_back(tiny_bundle):
    port = _free_port()
    config = VoxtralConfig(
        backend="vllm",
        model="dummy:tiny",
        transcribe_history=False,
        vllm={"base_url": f"http://127.0.0.1:{port}/v1", "connect_timeout_secs": 2.0},
    )
    service = VoxtralLLMService(config)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=1))  # nobody listening: refused at once
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        async with VLLMProtocolServer(tiny_bundle.tokenizer, port=port) as server:
            await h.send(make_utterance(1.0, seed=2))
            await h.wait_down(count(LLMFullResponseEndFrame, 2))
        await h.send(make_utterance(1.0, seed=3))  # down again
        await h.wait_down(count(LLMFullResponseEndFrame, 3))
        async with VLLMProtocolServer(tiny_bundle.tokenizer, port=port) as server:
            await h.send(make_utterance(1.0, seed=4))
            await h.wait_down(count(LLMFullResponseEndFrame, 4))

    errors = [f.error for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 2 and all("cannot reach vLLM" in e for e in errors)
    assert [bool(s.error) for s in service.turn_stats] == [True, False, True, False]
    assert service.turn_stats[3].text == "".join(server.reply_words)
    assert len(server.requests[0].audios) == 4  # the turns it missed are still in the conversation
    assert sum(isinstance(f, TTSSpeakFrame) for f in h.down) == 2


# ---- Daily ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not importable("daily"), reason="daily-python is not installed")
async def test_daily_refusing_the_join_is_one_clear_error_and_the_session_ends(monkeypatch):
    from pipecat.transports.daily.transport import DailyTransportClient

    from voxtral_pipeline.pipeline import build_transport
    from voxtral_pipeline.server import build_session
    from voxtral_pipeline.transports.daily import DailyError, run_until_joined_then_done

    async def refuse(self):
        return None, "room bot-room is full (injected)"

    monkeypatch.setattr(DailyTransportClient, "_join", refuse)
    config = dummy_config(
        "daily",
        **{
            "transport.daily.room_url": "https://test.daily.co/bot-room",
            "transport.daily.join_timeout_secs": 60,
        },
    )
    transport = build_transport(config)
    voice = build_session(config, transport, await asyncio.to_thread(shared_models))
    with pytest.raises(DailyError) as caught:
        await run_until_joined_then_done(voice, transport, config.transport.daily.join_timeout_secs)
    # Daily's own reason, not the 60-s timeout, and a sentence rather than a traceback.
    assert "could not join the Daily room" in str(caught.value) and "is full (injected)" in str(caught.value)
    assert "\n" not in str(caught.value)
    await poll(lambda: voice.worker.has_finished(), "the session to wind down", timeout=30)
