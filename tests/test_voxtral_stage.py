"""The Voxtral stage in a pipeline: streaming, one inference per turn, history, interruption, errors."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMServiceMetadataFrame,
    LLMTextFrame,
    MetricsFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    WAIT_TIMEOUT_S,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.backend import AnswerJob, LocalBackend

INSTRUCTIONS = "Answer in one short sentence."


def _config(**overrides) -> VoxtralConfig:
    values = {
        "model": "dummy:tiny",
        "temperature": 0.0,
        "max_new_tokens": 12,
        "instructions": INSTRUCTIONS,
        "transcribe_history": False,  # these tests count generate() calls; transcripts have their own
        "warmup": False,
    }
    return VoxtralConfig(**{**values, **overrides})


def _texts(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame)]


def _prompt_text(bundle, input_ids: list[int]) -> str:
    return bundle.tokenizer.decode([i for i in input_ids if i != AUDIO_TOKEN_ID], skip_special_tokens=False)


async def _thread_done(spy: GenerateSpy) -> None:
    assert await asyncio.to_thread(spy.done.wait, WAIT_TIMEOUT_S)


async def test_one_turn_streams_each_token(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    down, up = await run_test(
        service,
        frames_to_send=[make_utterance(1.0)],
        pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        start_timeout=WAIT_TIMEOUT_S,
    )
    assert len(spy.calls) == 1  # exactly one generate() for the turn (warm-up off)
    assert service.generate_calls == 1 and service.turn_stats[0].generate_calls == 1
    call = spy.calls[0]

    response = [f for f in down if not isinstance(f, (MetricsFrame, LLMServiceMetadataFrame))]
    assert isinstance(response[0], LLMFullResponseStartFrame)
    assert isinstance(response[-1], LLMFullResponseEndFrame)
    texts = _texts(response)
    assert len(texts) == len(response) - 2 >= 1
    assert all(texts)  # no empty deltas
    # Tiny tokens are single bytes, so every generated token is its own frame.
    assert len(texts) == len([i for i in call["output_ids"] if i != tiny_bundle.eos_token_id])
    assert "".join(texts) == tiny_bundle.decode(call["output_ids"])
    assert not any(isinstance(f, UserUtteranceFrame) for f in down)  # consumed
    assert not any(isinstance(f, ErrorFrame) for f in up)

    prompt = _prompt_text(tiny_bundle, call["input_ids"])
    assert call["input_ids"].count(AUDIO_TOKEN_ID) == 375 and INSTRUCTIONS in prompt
    stats = service.turn_stats[0]
    assert stats.prompt_tokens == len(call["input_ids"]) and stats.audio_tokens == 375
    assert stats.completion_tokens == len(call["output_ids"])
    assert stats.ttft_ms is not None and stats.ttft_ms > 0 and not stats.interrupted

    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    ttfb = [d for d in metrics if isinstance(d, TTFBMetricsData) and d.value > 0]
    assert len(ttfb) == 1
    usage = [d.value for d in metrics if isinstance(d, LLMUsageMetricsData)]
    assert len(usage) == 1
    assert usage[0].prompt_tokens == len(call["input_ids"])  # audio tokens included
    assert usage[0].completion_tokens == len(call["output_ids"])
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens

    history = service.history
    assert [t.role for t in history] == ["user", "assistant"]
    assert history[1].text == "".join(texts)


async def test_second_turn_hears_the_first_in_its_prompt(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        first_answer = "".join(_texts(h.down))
        await h.send(make_utterance(2.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert len(spy.calls) == 2 and service.generate_calls == 2  # one per turn
    second = spy.calls[1]["input_ids"]
    assert second.count(AUDIO_TOKEN_ID) == 2 * 375  # both utterances, as audio
    assert second[: len(spy.calls[0]["input_ids"])] == spy.calls[0]["input_ids"]
    prompt = _prompt_text(tiny_bundle, second)
    assert first_answer and f"[/INST]{first_answer}</s>" in prompt
    assert prompt.count(INSTRUCTIONS) == 1  # in the first user turn only
    assert prompt.startswith(f"<s>[INST][BEGIN_AUDIO]{INSTRUCTIONS}[/INST]")
    assert [t.role for t in service.history] == ["user", "assistant", "user", "assistant"]
    assert [s.turn for s in service.turn_stats] == [0, 1]
    assert service.turn_stats[1].prompt_tokens == len(second)


async def test_interruption_stops_generation_and_keeps_partial_text(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(max_new_tokens=200), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        spy.gate_at_forward = 4  # prefill + 2 decode steps stream 3 tokens, then the 4th step waits
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMTextFrame, 3))
        await h.send(InterruptionFrame())
        await h.wait_down(count(InterruptionFrame))
        spy.gate_at_forward = None
        spy.gate.set()
        await _thread_done(spy)

        partial = "".join(_texts(h.down))
        assert len(_texts(h.down)) == 3
        # Stopped at the first decode step after the interruption, far from max_new_tokens.
        assert len(spy.calls[0]["output_ids"]) == 4
        assert not any(isinstance(f, LLMFullResponseEndFrame) for f in h.down)
        assert service.history[-1].role == "assistant" and service.history[-1].text == partial
        assert service.turn_stats[0].interrupted

        await h.send(make_utterance(1.0, seed=3))
        await h.wait_down(count(LLMFullResponseEndFrame))

    next_prompt = _prompt_text(tiny_bundle, spy.calls[1]["input_ids"])
    assert f"[/INST]{partial}</s>" in next_prompt  # what was said, not what would have been
    assert len(spy.calls) == 2


async def test_interruption_during_prefill_reports_no_ttfb(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(max_new_tokens=200), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        spy.gate_at_forward = 1  # the prefill forward (audio encoder + prompt) waits
        await h.send(make_utterance(1.0))
        assert await asyncio.to_thread(spy.gate_reached.wait, WAIT_TIMEOUT_S)
        await h.send(InterruptionFrame())
        await h.wait_down(count(InterruptionFrame))
        spy.gate_at_forward = None
        spy.gate.set()
        await _thread_done(spy)
        assert len(spy.calls[0]["output_ids"]) == 1  # prefill is not interruptible; no decode step ran

        await h.send(make_utterance(1.0, seed=8))
        await h.wait_down(count(LLMFullResponseEndFrame))

    first_turn = h.down[: next(i for i, f in enumerate(h.down) if isinstance(f, InterruptionFrame))]
    assert not _texts(first_turn)
    ttfb = [
        d for f in first_turn if isinstance(f, MetricsFrame) for d in f.data if isinstance(d, TTFBMetricsData)
    ]
    assert all(d.value == 0 for d in ttfb)  # only pipecat's initial empty metrics
    assert service.history[1].role == "assistant" and service.history[1].text == ""
    assert service.turn_stats[0].interrupted and service.turn_stats[0].ttft_ms is None
    # The empty answer is left out of the next prompt: two user audios, no assistant message.
    next_prompt = _prompt_text(tiny_bundle, spy.calls[1]["input_ids"])
    assert next_prompt.count("[BEGIN_AUDIO]") == 2 and "</s>" not in next_prompt


async def test_new_utterance_cancels_the_answer_in_progress(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(max_new_tokens=200), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        spy.gate_at_forward = 3
        await h.send(make_utterance(1.0, seed=4))
        await h.wait_down(count(LLMTextFrame, 2))
        await h.send(make_utterance(1.0, seed=5))
        await h.wait_down(count(LLMFullResponseStartFrame, 2))  # the old turn was stopped first
        spy.gate_at_forward = None
        spy.gate.set()
        await h.wait_down(count(LLMFullResponseEndFrame))

    assert len(spy.calls) == 2 and len(spy.calls[0]["output_ids"]) == 3
    assert sum(isinstance(f, LLMFullResponseStartFrame) for f in h.down) == 2
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in h.down) == 1
    assert [t.role for t in service.history] == ["user", "assistant", "user", "assistant"]
    assert len(service.history[1].text) == 2
    assert service.turn_stats[0].interrupted and not service.turn_stats[1].interrupted


async def test_model_error_is_reported_and_the_next_turn_works(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        spy.fail_at_forward = (2, RuntimeError("synthetic decode failure"))  # after the first token
        await h.send(make_utterance(1.0))
        await h.wait_up(count(ErrorFrame))
        await h.wait_down(count(LLMFullResponseEndFrame))
        errors = [f for f in h.up if isinstance(f, ErrorFrame)]
        assert len(errors) == 1 and not errors[0].fatal
        assert (
            "Voxtral generation failed" in errors[0].error and "synthetic decode failure" in errors[0].error
        )
        assert service.is_usable
        assert len(_texts(h.down)) == 1

        await h.send(make_utterance(1.0, seed=6))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert len(_texts(h.down)) > 1
    assert len([f for f in h.up if isinstance(f, ErrorFrame)]) == 1
    assert "RuntimeError" in service.turn_stats[0].error and service.turn_stats[1].error is None
    assert len(spy.calls) == 2


async def test_load_failure_surfaces_as_model_unavailable():
    service = VoxtralLLMService(_config(model="dummy:huge"))
    errors: list[ErrorFrame] = []

    @service.event_handler("on_error")
    async def _on_error(processor, error: ErrorFrame):
        errors.append(error)

    async with StageHarness(service):
        pass
    assert len(errors) == 1 and isinstance(errors[0].exception, ModelUnavailableError)
    assert "\n" not in str(errors[0].exception) and "dummy:tiny" in str(errors[0].exception)


async def test_every_request_before_setup_says_the_model_is_not_loaded():
    backend = LocalBackend(_config(), "s1")  # start() (the stage's setup) was never called
    messages = [{"role": "user", "content": "hi"}]
    job = AnswerJob("s1", messages, max_new_tokens=4, temperature=0.0, top_p=1.0)
    cancel = threading.Event()
    requests = [
        backend.answer(job, on_text=None, on_calls=None),
        backend.transcribe(np.zeros(1600, np.float32), "en", cancel, 16),
        backend.refresh("s1", messages, None, cancel),
        backend.complete(messages, 4, 0.0, 1.0),
    ]
    for request in requests:
        with pytest.raises(RuntimeError, match="not loaded yet"):
            await request
