"""The Voxtral stage on the shared engine: streaming order, KV reuse, idle transcripts, odd audio."""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import run_test

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    WAIT_TIMEOUT_S,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    wait_until,
)
from voxtral_pipeline.audio import float_to_pcm16
from voxtral_pipeline.config import TurnConfig, VoxtralConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.processors.turns import TurnStage
from voxtral_pipeline.processors.voxtral import VoxtralEngine, VoxtralLLMService

TRANSCRIBE_TOKEN_ID = 34


def _config(**overrides) -> VoxtralConfig:
    values = {
        "model": "dummy:tiny",
        "temperature": 0.0,
        "max_new_tokens": 8,
        "instructions": "Be brief.",
        "transcribe_history": False,
        "warmup": False,
    }
    return VoxtralConfig(**{**values, **overrides})


def _service(bundle, config: VoxtralConfig) -> VoxtralLLMService:
    """A stage on its own engine (so engine settings from the config apply, and the event log is its own)."""
    engine = VoxtralEngine(
        bundle,
        kv_cache=config.kv_cache,
        quantum_tokens=config.fairness_quantum_tokens,
        kv_cache_max_tokens=config.kv_cache_max_tokens,
    )
    return VoxtralLLMService(config, engine=engine)


def _utterance_from(samples: np.ndarray) -> UserUtteranceFrame:
    frame = make_utterance(0.1)
    frame.audio = float_to_pcm16(samples.astype(np.float32))
    return frame


async def test_first_text_frame_is_pushed_before_the_second_token_is_decoded(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = _service(tiny_bundle, _config())
    async with StageHarness(service) as h:
        spy.gate_at_forward = 2  # the decode step of the second token waits
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMTextFrame, 1))
        # The second token cannot exist yet: its forward pass is held at the gate.
        assert spy.forward_calls <= 2 and spy.calls[0]["output_ids"] is None
        assert sum(isinstance(f, LLMTextFrame) for f in h.down) == 1
        assert await asyncio.to_thread(spy.gate_reached.wait, WAIT_TIMEOUT_S)
        spy.gate_at_forward = None
        spy.gate.set()
        await h.wait_down(count(LLMFullResponseEndFrame))
    service.engine.close()


async def test_one_generate_per_turn_and_flat_prefill(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = _service(tiny_bundle, _config())
    async with StageHarness(service) as h:
        for i in range(4):
            await h.send(make_utterance(1.0, seed=10 + i))
            await h.wait_down(count(LLMFullResponseEndFrame, i + 1))
    service.engine.close()
    stats = service.turn_stats
    assert len(spy.calls) == 4 and [s.generate_calls for s in stats] == [1, 1, 1, 1]
    prefill = [s.prefill_tokens for s in stats]
    prompt = [s.prompt_tokens for s in stats]
    assert prompt == sorted(prompt) and prompt[-1] > 4 * 375  # the context grows...
    assert all(375 < p < 375 + 30 for p in prefill[1:]), prefill  # ...the work per turn does not
    assert [s.cached_tokens + s.prefill_tokens for s in stats] == prompt


async def test_transcripts_replace_old_audio_while_idle_and_give_way_to_a_new_turn(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = _service(tiny_bundle, _config(transcribe_history=True, history_audio_turns=0))
    engine = service.engine
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=21))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        # After the answer, while idle: a transcript of turn 0, then a refresh of the next context.
        await wait_until(
            lambda: service.context.user_turns[0].transcript is not None and not engine.busy, "transcript"
        )
        transcript = service.context.user_turns[0].transcript
        assert any(e.kind == "refresh" and e.event == "done" for e in engine.events)

        # Turn 1's transcription will be caught mid-way by turn 2.
        spy.gate_when = lambda ids: TRANSCRIBE_TOKEN_ID in ids
        spy.gate_at_forward = 2
        await h.send(make_utterance(1.0, seed=22))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
        assert await asyncio.to_thread(spy.gate_reached.wait, WAIT_TIMEOUT_S)
        await h.send(make_utterance(1.0, seed=23))
        await h.wait_down(count(LLMFullResponseStartFrame, 3))
        spy.gate_when = None
        spy.gate_at_forward = None
        spy.gate.set()
        await h.wait_down(count(LLMFullResponseEndFrame, 3))
        await wait_until(lambda: not engine.busy, "idle engine")
    engine.close()

    answers = [c for c in spy.calls if TRANSCRIBE_TOKEN_ID not in c["input_ids"]]
    assert len(answers) == 3
    # Turn 1 heard turn 0 through its transcript: one audio (its own), and a small prefill (the refresh).
    second = answers[1]["input_ids"]
    assert second.count(AUDIO_TOKEN_ID) == 375
    assert transcript and transcript in tiny_bundle.tokenizer.decode(second, skip_special_tokens=False)
    assert service.turn_stats[1].prefill_tokens < 375 + 30
    # ...and the refresh's prefill, done for it while idle, is on its bill (none for the first turn).
    assert service.turn_stats[0].ahead_prefill_tokens == 0
    assert service.turn_stats[1].ahead_prefill_tokens > 0 and service.turn_stats[1].ahead_prefill_ms > 0
    # Turn 2 came while turn 1 was being transcribed: the transcription stopped, turn 1 is a placeholder.
    third = tiny_bundle.tokenizer.decode(answers[2]["input_ids"], skip_special_tokens=False)
    assert "[earlier spoken turn, 1.0 s, not transcribed yet]" in third and transcript in third
    log = [(e.kind, e.event) for e in engine.events]
    stopped = max(i for i, e in enumerate(log) if e == ("transcribe", "cancelled"))
    assert stopped < max(i for i, e in enumerate(log) if e == ("answer", "start"))
    cut = [c for c in spy.calls if TRANSCRIBE_TOKEN_ID in c["input_ids"]][1]
    assert len(cut["output_ids"]) <= 2  # stopped within one decode step
    assert all(s.generate_calls == 1 for s in service.turn_stats)


async def test_tiny_and_silent_turns_are_dropped_without_inference(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = _service(tiny_bundle, _config())
    async with StageHarness(service) as h:
        await h.send(make_utterance(0.05, seed=1))  # 50 ms
        await h.send(_utterance_from(np.zeros(16000)))  # 1 s of digital silence
        await h.send(_utterance_from(np.full(16000, 0.001)))  # below -50 dBFS
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
    service.engine.close()
    assert len(spy.calls) == 1
    assert [bool(s.dropped) for s in service.turn_stats] == [True, True, True, False]
    assert "shorter than 100 ms" in service.turn_stats[0].dropped
    assert sum(isinstance(f, LLMFullResponseStartFrame) for f in h.down) == 1
    assert [t.role for t in service.history] == ["user", "assistant"]


async def test_long_utterances_become_chunks_up_to_the_cap(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = _service(tiny_bundle, _config(max_utterance_secs=60, max_new_tokens=2))
    rng = np.random.default_rng(5)
    long_ = (0.1 * rng.standard_normal(70 * 16000)).astype(np.float32)
    long_[-16000:] = 0.3  # the end of the utterance is what is kept
    async with StageHarness(service) as h:
        await h.send(_utterance_from(long_[: 40 * 16000]))  # 40 s: two chunks
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        await h.send(_utterance_from(long_))  # 70 s: capped to the last 60 s, two chunks
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
    service.engine.close()
    assert spy.calls[0]["input_ids"].count(AUDIO_TOKEN_ID) == 750
    assert spy.calls[1]["input_ids"].count(AUDIO_TOKEN_ID) == 750 + 750
    kept = service.context.user_turns[1].audio
    assert len(kept) == 60 * 16000 and np.allclose(kept[-16000:], 0.3, atol=1e-3)
    assert service.turn_stats[1].prefill_tokens < 750 + 40  # only the new chunks were encoded


async def test_an_upstream_transcript_starts_no_turn_in_the_turn_stage():
    """The turn stage starts turns on the VAD only: a transcript going upstream through it is passed on."""
    stage = TurnStage(TurnConfig())
    transcript = TranscriptionFrame(text="hello there", user_id="", timestamp="")
    down, up = await run_test(
        stage, frames_to_send=[transcript], frames_to_send_direction=FrameDirection.UPSTREAM
    )  # fmt: skip
    transcripts = [f for f in up if isinstance(f, TranscriptionFrame)]
    assert len(transcripts) == 1 and transcripts[0].text == "hello there"
    assert not any(isinstance(f, (UserStartedSpeakingFrame, InterruptionFrame)) for f in down + up)
