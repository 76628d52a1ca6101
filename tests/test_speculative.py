"""Speculative start in the Voxtral stage: held until confirmed, discarded without a trace."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    WAIT_TIMEOUT_S,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    wait_until,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.frames import SpeculationCancelFrame, SpeculativeUtteranceFrame, UserUtteranceFrame
from voxtral_pipeline.processors.voxtral import VoxtralLLMService


def _config(**overrides) -> VoxtralConfig:
    values = {
        "model": "dummy:tiny",
        "temperature": 0.0,
        "max_new_tokens": 12,
        "seed": 0,
        "transcribe_history": False,
        "warmup": False,
    }
    return VoxtralConfig(**{**values, **overrides})


def _text(frames) -> str:
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


def _answers(frames) -> int:
    return sum(isinstance(f, LLMFullResponseStartFrame) for f in frames)


async def _reference(
    bundle, utterance: UserUtteranceFrame, spy: GenerateSpy, config: VoxtralConfig | None = None
) -> tuple[str, list[int]]:
    """The answer (and prompt) a session without speculation gives to ``utterance``."""
    service = VoxtralLLMService(config or _config(), bundle=bundle)
    async with StageHarness(service) as h:
        await h.send(utterance)
        await h.wait_down(count(LLMFullResponseEndFrame))
    return _text(h.down), spy.calls[-1]["input_ids"]


async def test_confirmed_speculation_is_released_and_is_the_turns_one_inference(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    reference, _ = await _reference(tiny_bundle, make_utterance(1.0, seed=1), spy)
    calls_before = len(spy.calls)

    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    utterance = make_utterance(1.0, seed=1)
    async with StageHarness(service) as h:
        await h.send(SpeculativeUtteranceFrame(utterance=utterance))
        await wait_until(
            lambda: service._speculation.turn is not None and service._speculation.turn.speculation.finished,
            "the speculative answer to finish",
        )
        # Answered, but held: nothing went downstream, and the context has no answer yet.
        assert _answers(h.down) == 0 and not _text(h.down)
        assert [t.role for t in service.history] == ["user"]

        await h.send(replace(utterance, confirms_speculation=True))
        await h.wait_down(count(LLMFullResponseEndFrame))

    assert len(spy.calls) - calls_before == 1 and service.generate_calls == 1  # no second inference
    assert _answers(h.down) == 1 and _text(h.down) == reference
    assert [t.role for t in service.history] == ["user", "assistant"]
    assert service.history[1].text == reference
    (stats,) = service.turn_stats
    assert stats.speculation_saved_ms >= 0.0
    assert service.speculation_counts == {"confirmed": 1, "discarded": 0}


async def test_discarded_speculation_is_unheard_and_changes_no_later_answer(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    final = make_utterance(2.0, seed=2)
    config = _config(max_new_tokens=40)
    reference, reference_prompt = await _reference(tiny_bundle, final, spy, config)

    service = VoxtralLLMService(config, bundle=tiny_bundle)
    async with StageHarness(service) as h:
        spy.gate_at_forward = 3  # the speculative answer is mid-stream when the user goes on
        await h.send(SpeculativeUtteranceFrame(utterance=make_utterance(1.0, seed=5)))
        assert await asyncio.to_thread(spy.gate_reached.wait, WAIT_TIMEOUT_S)
        await h.send(SpeculationCancelFrame())
        await wait_until(lambda: service._speculation.turn is None, "the speculation to be discarded")
        spy.gate_at_forward = None
        spy.gate.set()
        await wait_until(lambda: not service.engine.busy, "the discarded answer to stop")
        # The user's whole turn, as a session without speculation would have heard it.
        await h.send(replace(final, confirms_speculation=False))
        await h.wait_down(count(LLMFullResponseEndFrame))

    # Not a token of the discarded answer was heard; the real answer is the one without speculation.
    assert _answers(h.down) == 1 and _text(h.down) == reference
    # Its prompt is exactly the speculation-free one: the discarded user turn left no trace.
    assert spy.calls[-1]["input_ids"] == reference_prompt
    assert [t.role for t in service.history] == ["user", "assistant"]
    assert len(service.history[0].audio) == 2 * 16000
    assert service.generate_calls == 1 and len(service.turn_stats) == 1
    assert service.speculation_counts == {"confirmed": 0, "discarded": 1}
    # The discarded answer's prefill (its 1-s turn's 375 audio tokens and more) is billed to the turn.
    assert service.turn_stats[0].ahead_prefill_tokens > 375


async def test_turn_that_went_on_discards_the_speculation_it_does_not_confirm(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(SpeculativeUtteranceFrame(utterance=make_utterance(1.0, seed=5)))
        await wait_until(lambda: bool(spy.calls), "the speculative inference to start")
        await h.send(make_utterance(1.5, seed=6))  # no SpeculationCancelFrame, no confirmation
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert _answers(h.down) == 1
    assert service.speculation_counts == {"confirmed": 0, "discarded": 1}
    assert [round(t.duration_secs, 1) for t in service.history if t.role == "user"] == [1.5]
