"""The Voxtral stage as a pipecat LLMService: LLMContext, completion frames, settings, tools, bad input."""

from __future__ import annotations

import copy

import pytest
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    LLMUpdateSettingsFrame,
    ManuallySwitchServiceFrame,
    TranscriptionFrame,
)
from pipecat.observers.loggers.llm_log_observer import LLMLogObserver
from pipecat.pipeline.llm_switcher import LLMSwitcher
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    wait_until,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.engine import VoxtralEngine
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.settings import VoxtralLLMSettings

INSTRUCTIONS = "Answer in one short sentence."
GET_TIME = FunctionSchema(
    name="get_time", description="The time now.", properties={"city": {"type": "string"}}, required=["city"]
)


def _config(**overrides) -> VoxtralConfig:
    values = {
        "model": "dummy:tiny",
        "temperature": 0.0,
        "max_new_tokens": 8,
        "instructions": INSTRUCTIONS,
        "transcribe_history": False,
        "warmup": False,
    }
    return VoxtralConfig(**{**values, **overrides})


def _prompt(bundle, ids: list[int]) -> str:
    return bundle.tokenizer.decode([i for i in ids if i != AUDIO_TOKEN_ID], skip_special_tokens=False)


def _ends(n: int):
    return count(LLMFullResponseEndFrame, n)


class _Requests:
    """Records the engine requests of a session (sampling, tools) as the stage sends them."""

    def __init__(self, engine: VoxtralEngine, monkeypatch: pytest.MonkeyPatch):
        self.sent = []
        submit = engine.submit

        def record(request):
            if request.kind == "answer":
                self.sent.append(request)
            return submit(request)

        monkeypatch.setattr(engine, "submit", record)


async def test_the_greeting_pattern_and_appended_messages_start_completions(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    context = LLMContext(messages=[{"role": "system", "content": "Greet the user warmly."}])
    service = VoxtralLLMService(_config(), bundle=tiny_bundle, context=context)
    async with StageHarness(service) as h:
        await h.send(LLMRunFrame())  # the greeting: no user turn yet
        await h.wait_down(_ends(1))
        await h.send(LLMMessagesAppendFrame([{"role": "user", "content": "What is the time?"}], run_llm=True))
        await h.wait_down(_ends(2))
    assert len(spy.calls) == 2
    greeting, second = (_prompt(tiny_bundle, c["input_ids"]) for c in spy.calls)
    # The system message and the instructions open the first user turn (Voxtral takes no system prompt).
    assert "Greet the user warmly." in greeting and INSTRUCTIONS in greeting
    assert "What is the time?" in second and "Greet the user warmly." in second
    assert [s.trigger for s in service.turn_stats] == ["run", "messages"]


async def test_a_context_frame_is_answered_once(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    context = LLMContext(messages=[{"role": "user", "content": "Hello there."}])
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(1))
        await h.send(LLMContextFrame(context))  # nothing new in it: no completion
        context.add_message({"role": "assistant", "content": "Hi."})
        context.add_message({"role": "user", "content": "How are you?"})
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(2))
    assert len(spy.calls) == 2 and service.llm_context is context
    # An assistant aggregator records the answers in a shared context: the stage writes none.
    assert not service.records_answers
    assert [m["role"] for m in context.get_messages()] == ["user", "assistant", "user"]


async def test_settings_update_mid_session_changes_tokens_temperature_and_instruction(
    tiny_bundle, monkeypatch
):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    engine = VoxtralEngine.for_bundle(tiny_bundle)
    requests = _Requests(engine, monkeypatch)
    service = VoxtralLLMService(_config(max_new_tokens=8), engine=engine)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_down(_ends(1))
        delta = VoxtralLLMSettings(max_tokens=3, temperature=0.7, system_instruction="Speak like a pirate.")
        await h.send(LLMUpdateSettingsFrame(delta=delta))
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(_ends(2))
    first, second = requests.sent
    assert (first.max_new_tokens, first.temperature) == (8, 0.0)
    assert (second.max_new_tokens, second.temperature) == (3, 0.7)
    assert len(spy.calls[1]["output_ids"]) <= 3
    assert "Speak like a pirate." in _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    assert INSTRUCTIONS not in _prompt(tiny_bundle, spy.calls[1]["input_ids"])


async def test_set_tools_frame_offers_the_tools_from_the_next_request_on(tiny_bundle, monkeypatch):
    engine = VoxtralEngine.for_bundle(tiny_bundle)
    requests = _Requests(engine, monkeypatch)
    service = VoxtralLLMService(_config(), engine=engine)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(_ends(1))
        await h.send(LLMSetToolsFrame(tools=ToolsSchema(standard_tools=[GET_TIME])))
        await h.send(make_utterance(1.0, seed=3))
        await h.wait_down(_ends(2))
    first, second = requests.sent
    assert first.tools is None
    assert [t["function"]["name"] for t in second.tools] == ["get_time"]
    assert isinstance(service.llm_context.tools, ToolsSchema)


async def test_context_edited_mid_session_gives_the_same_prompt_and_answer_as_a_fresh_session(
    tiny_bundle, monkeypatch
):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    config = _config(history_audio_turns=4)
    service = VoxtralLLMService(config, bundle=tiny_bundle, session_id="edited")
    async with StageHarness(service) as h:
        for i in range(2):
            await h.send(make_utterance(1.0, seed=10 + i))
            await h.wait_down(_ends(i + 1))
        # The application rewrites the conversation: an answer edited, a note inserted before it.
        messages = service.llm_context.get_messages()
        messages[1]["content"] = "An answer the application rewrote."
        service.llm_context.set_messages(
            [*messages[:1], {"role": "user", "content": "A note."}, *messages[1:]]
        )
        snapshot = copy.deepcopy(service.llm_context.get_messages())
        await h.send(make_utterance(1.0, seed=12))
        await h.wait_down(_ends(3))
    edited = spy.calls[-1]
    stats = service.turn_stats[-1]
    # The cache was cropped where the edit begins: reused before it, nothing reused after it.
    assert 0 < stats.cached_tokens < len(spy.calls[1]["input_ids"])

    fresh = VoxtralLLMService(config, bundle=tiny_bundle, session_id="fresh", context=LLMContext(snapshot))
    async with StageHarness(fresh) as h:
        await h.send(make_utterance(1.0, seed=12))
        await h.wait_down(_ends(1))
    assert fresh.turn_stats[0].cached_tokens == 0
    assert spy.calls[-1]["input_ids"] == edited["input_ids"]
    assert spy.calls[-1]["output_ids"] == edited["output_ids"]


async def test_what_voxtral_cannot_take_is_named_once_and_the_turn_goes_on(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    context = LLMContext(
        messages=[
            {"role": "wizard", "content": "abracadabra"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ]
    )
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(1))
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and not errors[0].fatal
    assert "image_url" in errors[0].error and "'wizard'" in errors[0].error
    assert len(spy.calls) == 1 and "What is in this picture?" in _prompt(
        tiny_bundle, spy.calls[0]["input_ids"]
    )
    assert any(isinstance(f, LLMTextFrame) for f in h.down)


async def test_idle_transcripts_go_upstream_and_their_echo_is_not_a_new_turn(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(transcribe_history=True), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=4))
        await h.wait_down(_ends(1))
        await h.wait_up(count(TranscriptionFrame))
        transcript = next(f for f in h.up if isinstance(f, TranscriptionFrame)).text
        assert transcript == service.context.user_turns[0].transcript
        # A user aggregator writes it back as a user message: the spoken turn is already there.
        calls = len(spy.calls)
        service.llm_context.add_message({"role": "user", "content": transcript})
        await h.send(LLMContextFrame(service.llm_context))
        await wait_until(lambda: not service.engine.busy, "idle engine")
    assert len(spy.calls) == calls
    assert [m["role"] for m in service.llm_context.get_messages()] == ["user", "assistant"]


async def test_run_inference_is_a_one_shot_outside_the_conversation(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(), bundle=tiny_bundle)
    async with StageHarness(service):
        text = await service.run_inference(
            LLMContext(messages=[{"role": "user", "content": "Summarize the call."}]), max_tokens=4
        )
    assert text is None or isinstance(text, str)
    assert len(spy.calls) == 1 and len(spy.calls[0]["output_ids"]) <= 4
    assert "Summarize the call." in _prompt(tiny_bundle, spy.calls[0]["input_ids"])
    assert service.generate_calls == 0 and service.llm_context.get_messages() == []


class _StubLLM(LLMService):
    """An LLM that answers every context frame with one fixed word."""

    def __init__(self):
        super().__init__()
        self.contexts = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self.contexts += 1
            await self.push_frame(LLMTextFrame("stub"))
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


async def test_llm_switcher_between_voxtral_and_another_llm(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    voxtral = VoxtralLLMService(_config(), bundle=tiny_bundle)
    stub = _StubLLM()
    switcher = LLMSwitcher([voxtral, stub])
    context = LLMContext(messages=[{"role": "user", "content": "Hello."}])
    async with StageHarness(switcher) as h:
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(1))
        await h.send(ManuallySwitchServiceFrame(service=stub))
        context.add_message({"role": "user", "content": "And now?"})
        await h.send(LLMContextFrame(context))
        await h.wait_down(
            lambda frames: any(isinstance(f, LLMTextFrame) and f.text == "stub" for f in frames)
        )
    assert len(spy.calls) == 1 and stub.contexts == 1


async def test_llm_log_observer_sees_the_stage(tiny_bundle):
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    try:
        service = VoxtralLLMService(_config(), bundle=tiny_bundle)
        harness = StageHarness(service)
        harness.worker.add_observer(LLMLogObserver())
        async with harness as h:
            await h.send(make_utterance(1.0))
            await h.wait_down(_ends(1))
    finally:
        logger.remove(sink)
    assert any("LLM START RESPONSE" in line and "VoxtralLLMService" in line for line in lines)
    assert any("LLM GENERATING" in line for line in lines)


async def test_more_audio_than_voxtral_takes_is_cut_named_once_and_answered(tiny_bundle, monkeypatch):
    """A context message with 100 s of audio (over voxtral.max_utterance_secs): its last 30 s are heard."""
    import numpy as np
    from pipecat.frames.frames import AudioRawFrame

    from voxtral_pipeline.audio import float_to_pcm16

    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    samples = (0.1 * np.random.default_rng(7).standard_normal(100 * 16000)).astype(np.float32)
    frame = AudioRawFrame(audio=float_to_pcm16(samples), sample_rate=16000, num_channels=1)
    long_turn = await LLMContext.create_audio_message(audio_frames=[frame], text="What did I say?")
    context = LLMContext(messages=[long_turn])
    service = VoxtralLLMService(_config(max_utterance_secs=30), bundle=tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(1))
        context.add_message({"role": "assistant", "content": "Hm."})
        context.add_message({"role": "user", "content": "And now?"})
        await h.send(LLMContextFrame(context))
        await h.wait_down(_ends(2))
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "the first 70.0 s of the 100.0 s of audio in message 0" in errors[0].error
    assert [c["input_ids"].count(AUDIO_TOKEN_ID) for c in spy.calls] == [375, 375]  # 30 s, not 100
    assert "What did I say?" in _prompt(tiny_bundle, spy.calls[0]["input_ids"])


async def test_behind_the_turn_stage_a_transcript_goes_upstream_only(tiny_bundle):
    """Upstream for RTVI clients (the turn stage starts no turn on it: tests/test_voxtral_session.py);
    never downstream, where the TTS would say it."""
    service = VoxtralLLMService(_config(transcribe_history=True), bundle=tiny_bundle, turns="utterance")
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=4))
        await h.wait_down(_ends(1))
        await wait_until(lambda: any(isinstance(f, TranscriptionFrame) for f in h.up), "the transcript")
    sent = [f for f in h.up if isinstance(f, TranscriptionFrame)]
    assert [f.text for f in sent] == [service.context.user_turns[0].transcript]
    assert not any(isinstance(f, TranscriptionFrame) for f in h.down)
