"""Function calling on the Voxtral stage, driven through the real model code.

The tiny random model is constrained (a logits processor) to write a given function call; the
real tokenizer rendering, token streaming, call parsing, handler running and context code do the
rest, and the model then answers freely.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    ErrorFrame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
)
from pipecat.services.llm_service import FunctionCallParams

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    ForcedGeneration,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    tiny_tool_call,
    wait_until,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID, TOOL_CALLS_TOKEN_ID
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.tools import ToolCallStream, parse_tool_calls

END_INST = 4  # [/INST]: a prompt ending here is a new user turn (not the answer after a result)

GET_TIME = FunctionSchema(
    name="get_time",
    description="The current time in a time zone.",
    properties={"tz": {"type": "string", "description": "IANA time zone"}},
    required=["tz"],
)
BROKEN = FunctionSchema(name="broken", description="Always fails.", properties={}, required=[])
SLOW = FunctionSchema(name="slow", description="Never finishes.", properties={}, required=[])


def _config(**overrides) -> VoxtralConfig:
    values = {
        "model": "dummy:tiny",
        "temperature": 0.0,
        "max_new_tokens": 64,
        "instructions": "Be brief.",
        "transcribe_history": False,
        "warmup": False,
        "tools": {"filler": False},
    }
    return VoxtralConfig(**{**values, **overrides})


def _texts(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame)]


def _prompt(bundle, ids: list[int]) -> str:
    return bundle.tokenizer.decode([i for i in ids if i != AUDIO_TOKEN_ID], skip_special_tokens=False)


def _force_on_new_turns(*calls) -> callable:
    """Plan: every new user turn starts with the given call (popped in order); answers are free."""
    queue = list(calls)
    return lambda prompt: (queue.pop(0) if queue else None) if prompt[-1] == END_INST else None


async def test_call_runs_and_only_the_answer_is_spoken(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    ForcedGeneration(
        tiny_bundle.model, monkeypatch, _force_on_new_turns(tiny_tool_call(("get_time", {"tz": "UTC"})))
    )
    seen = []

    async def get_time(params):
        seen.append(params)
        await params.result_callback({"time": "10:30"})

    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=ToolsSchema(standard_tools=[GET_TIME]))
    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.send(make_utterance(1.0, seed=2))  # the next turn sees call and result
        await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert len(seen) == 1, service.turn_stats[0].tool_calls
    params = seen[0]
    assert params.function_name == "get_time" and dict(params.arguments) == {"tz": "UTC"}
    assert params.llm is service and params.context is service.llm_context  # pipecat's own params
    # Three requests: the call, the answer after its result, the next turn.
    assert len(spy.calls) == 3 and service.generate_calls == 3
    call_out = spy.calls[0]["output_ids"]
    assert call_out[0] == TOOL_CALLS_TOKEN_ID
    # Nothing of the call was spoken: the answer came after it (tiny answers are letters only).
    first_turn = h.down[: next(i for i, f in enumerate(h.down) if isinstance(f, LLMFullResponseEndFrame))]
    answer = "".join(_texts(first_turn))
    assert answer and not any(c in answer for c in '[]{}"')
    assert answer == tiny_bundle.decode(spy.calls[1]["output_ids"])

    # The tools, the call and its result are in the prompt of the answer, rendered by mistral-common.
    prompt = _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    call_id = service.history[1].tool_calls[0]["id"]
    assert prompt.startswith('<s>[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_time"')
    assert (
        f'[TOOL_CALLS][{{"name": "get_time", "arguments": {{"tz": "UTC"}}, "id": "{call_id}"}}]</s>' in prompt
    )
    assert prompt.endswith(f'[TOOL_RESULTS]{call_id}[TOOL_CONTENT]{{"time": "10:30"}}[/TOOL_RESULTS]')
    # The answer's request reused the KV cache of the call's request (same prefix up to the call).
    assert spy.calls[1]["input_ids"][: len(spy.calls[0]["input_ids"])] == spy.calls[0]["input_ids"]
    assert [t.role for t in service.history] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert service.history[3].text == answer
    next_prompt = _prompt(tiny_bundle, spy.calls[2]["input_ids"])
    assert f'[TOOL_CONTENT]{{"time": "10:30"}}[/TOOL_RESULTS]{answer}</s>' in next_prompt

    started = [f for f in h.down if isinstance(f, FunctionCallsStartedFrame)]
    progress = [f for f in h.down if isinstance(f, FunctionCallInProgressFrame)]
    results = [f for f in h.down if isinstance(f, FunctionCallResultFrame)]
    assert len(started) == len(progress) == len(results) == 1
    assert progress[0].tool_call_id == results[0].tool_call_id == call_id
    assert results[0].result == {"time": "10:30"} and results[0].error is None
    assert any(isinstance(f, FunctionCallResultFrame) for f in h.up)  # broadcast, like pipecat's LLMs
    stats = service.turn_stats[0]
    assert stats.tool_calls[0].name == "get_time" and stats.tool_calls[0].error is None
    assert stats.generate_calls == 2 and stats.text == answer
    # The answer's request prefilled only what followed the call (the KV cache held the rest).
    first_prompt = len(spy.calls[0]["input_ids"])
    assert stats.prefill_tokens < stats.prompt_tokens - first_prompt + 1


async def test_with_tools_the_idle_refresh_keeps_the_next_turn_prefill_small(tiny_bundle, monkeypatch):
    """Tools are rendered before the *last* user turn, so each new turn moves them; the idle
    refresh prefills the next prompt's prefix, tools included, while nobody waits."""
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    service = VoxtralLLMService(_config(max_new_tokens=4), bundle=tiny_bundle, tools=[GET_TIME])
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await wait_until(lambda: not service.engine.busy, "idle refresh")
        assert any(e.kind == "refresh" and e.event == "done" for e in service.engine.events)
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
    second = _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    assert second.count("[AVAILABLE_TOOLS]") == 1 and second.index("[AVAILABLE_TOOLS]") > second.index("</s>")
    # Only the new turn's audio block (375 + 2 tokens) and a few tokens around it were prefilled.
    assert service.turn_stats[1].prefill_tokens <= 375 + 8


async def test_handler_error_and_timeout_go_back_to_the_model(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    plan = _force_on_new_turns(tiny_tool_call(("broken", {})), tiny_tool_call(("slow", {})))
    ForcedGeneration(tiny_bundle.model, monkeypatch, plan)
    cancelled = asyncio.Event()

    async def broken(params):
        raise RuntimeError("database is down")

    async def slow(params):
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=[BROKEN, SLOW])
    service.register_function("broken", broken)
    service.register_function("slow", slow, timeout_secs=0.05)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert cancelled.is_set()  # the timed-out handler was cancelled (pipecat's timeout)
    assert len(spy.calls) == 4  # each turn: the call, then the answer
    after_error = _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    assert '[TOOL_CONTENT]"The function `broken` failed and returned no result."' in after_error
    after_timeout = _prompt(tiny_bundle, spy.calls[3]["input_ids"])
    assert "[TOOL_CONTENT]CANCELLED[/TOOL_RESULTS]" in after_timeout
    assert all(service.turn_stats[i].error is None for i in (0, 1))
    results = [f for f in h.down if isinstance(f, FunctionCallResultFrame)]
    assert [r.error for r in results] == ["RuntimeError: database is down"]
    assert [f.function_name for f in h.down if isinstance(f, FunctionCallCancelFrame)] == ["slow"]
    # pipecat reports the handler's failure (non-fatal, the application's); the conversation goes on.
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "broken" in errors[0].error and not errors[0].fatal
    assert len(_texts(h.down)) > 0


async def test_malformed_or_unknown_calls_are_answered_with_an_error(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    plan = _force_on_new_turns(
        tiny_tool_call(raw='[{"name": "get_time", "arguments": {"tz": '), tiny_tool_call(("nope", {}))
    )
    ForcedGeneration(tiny_bundle.model, monkeypatch, plan)
    ran = []

    async def get_time(params):
        ran.append(params)

    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=[GET_TIME])
    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert not ran
    assert "could not be parsed" in _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    missing = "The function `nope` is not currently available."  # pipecat's answer for an unknown function
    assert missing in _prompt(tiny_bundle, spy.calls[3]["input_ids"])
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]


async def test_interruption_during_a_call_cancels_it_and_sends_nothing_more(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    ForcedGeneration(
        tiny_bundle.model, monkeypatch, _force_on_new_turns(tiny_tool_call(("get_time", {"tz": "UTC"})))
    )
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def get_time(params):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=[GET_TIME])
    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await asyncio.wait_for(started.wait(), 60)
        await h.send(InterruptionFrame())
        await h.wait_down(count(InterruptionFrame))
        await asyncio.wait_for(cancelled.wait(), 60)
        after = len(h.down)
        await h.send(make_utterance(1.0, seed=3))
        await h.wait_down(count(LLMFullResponseEndFrame))

    interrupted_at = next(i for i, f in enumerate(h.down) if isinstance(f, InterruptionFrame))
    assert after == interrupted_at + 1  # nothing came after the interruption until the next turn
    assert not any(isinstance(f, (FunctionCallResultFrame, LLMTextFrame)) for f in h.down[:interrupted_at])
    assert service.turn_stats[0].interrupted
    assert len(spy.calls) == 2  # the call, then the next turn: no answer was generated after it
    # The call stays in the context with its "cancelled" result; the next turn sees it.
    prompt = _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    assert "[TOOL_CONTENT]CANCELLED[/TOOL_RESULTS]" in prompt


async def test_filler_is_said_while_a_slow_handler_runs(tiny_bundle, monkeypatch):
    ForcedGeneration(
        tiny_bundle.model, monkeypatch, _force_on_new_turns(tiny_tool_call(("get_time", {"tz": "UTC"})))
    )
    service = VoxtralLLMService(
        _config(tools={"filler": True, "filler_after_ms": 0, "filler_text": "Just a second."}),
        bundle=tiny_bundle,
        tools=[GET_TIME],
    )

    async def get_time(params):  # answers only once the filler is out: no timing involved
        await wait_until(lambda: any("Just a second." in t for t in _texts(h.down)), "the filler")
        await params.result_callback("10:30", properties=FunctionCallResultProperties(run_llm=True))

    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))

    texts = _texts(h.down)
    assert texts[0] == "Just a second. " and len(texts) > 1
    assert service.turn_stats[0].fillers == 1
    # What was said, filler included, is what the context keeps: the answer after the result.
    assert service.history[-1].role == "assistant" and service.history[-1].text == "".join(texts)


async def test_run_llm_false_ends_the_answer_at_the_result(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    ForcedGeneration(
        tiny_bundle.model, monkeypatch, _force_on_new_turns(tiny_tool_call(("get_time", {"tz": "UTC"})))
    )
    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=[GET_TIME])

    async def get_time(params):
        await params.result_callback("ok", properties=FunctionCallResultProperties(run_llm=False))

    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert len(spy.calls) == 1 and not _texts(h.down)
    assert [t.role for t in service.history] == ["user", "assistant", "tool", "assistant"]


# ----------------------------------------------------------------------------------------------
# Parsing (both tokenizer forms, and what vLLM's Mistral parser copes with)


def test_parse_pre_v11_list_with_id_and_string_arguments():
    calls = parse_tool_calls(
        '[{"name": "get_time", "arguments": {"tz": "UTC"}, "id": "abcABC123"},'
        ' {"name": "end_call", "arguments": "{\\"reason\\": \\"bye\\"}"}]'
    )
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("get_time", {"tz": "UTC"}, None),
        ("end_call", {"reason": "bye"}, None),
    ]
    assert calls[0].id == "abcABC123" and len(calls[1].id) == 9 and calls[1].id.isalnum()


def test_parse_v11_form_with_call_id_and_several_calls():
    calls = parse_tool_calls('get_time[CALL_ID]abcABC123[ARGS]{"tz": "UTC"}[TOOL_CALLS]end_call[ARGS]{}')
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("get_time", {"tz": "UTC"}, None),
        ("end_call", {}, None),
    ]
    assert calls[0].id == "abcABC123"


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "empty"),
        ("[{", "could not be parsed"),
        ('[{"arguments": {}}]', "must be an object with a name"),
        ('get_time[ARGS]{"tz": ', "not valid JSON"),
        ('[{"name": "get time!", "arguments": {}}]', "not a valid function name"),
        ('[{"name": "get_time", "arguments": [1, 2]}]', "must be a JSON object"),
    ],
)
def test_malformed_calls_parse_to_errors(text, error):
    calls = parse_tool_calls(text)
    assert len(calls) == 1 and error in (calls[0].error or "")
    json.dumps(calls[0].openai())  # still renderable in the context
    assert calls[0].name and len(calls[0].id) == 9


def test_stream_speaks_text_before_the_marker_only():
    stream = ToolCallStream()
    assert stream.feed("Let me check. ") == "Let me check. "
    assert stream.feed("[TOOL_CALLS]") == "" and stream.in_call
    assert stream.feed('[{"name": "get_time", "arguments": {}}]') == ""
    assert [c.name for c in stream.calls()] == ["get_time"]
    assert ToolCallStream().calls() == []


def test_streamer_hands_the_call_marker_out_whole(tiny_bundle):
    import torch

    from voxtral_pipeline.models.voxtral import TokenStreamer

    deltas = []
    streamer = TokenStreamer(tiny_bundle.tokenizer, lambda text, n: deltas.append(text))
    streamer.put(torch.tensor([[1, 2]]))  # the prompt: skipped
    for i in tiny_tool_call(("f", {}))[:-1]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert deltas[0] == "[TOOL_CALLS]" and "".join(deltas) == '[TOOL_CALLS][{"name": "f", "arguments": {}}]'


# ----------------------------------------------------------------------------------------------
# The same through a vLLM server (--enable-auto-tool-choice --tool-call-parser mistral)


async def test_vllm_streams_the_call_as_deltas_and_gets_the_result_back(tiny_bundle):
    from tests.vllm_protocol_server import VLLMProtocolServer

    seen = []

    async def get_time(params):
        seen.append(dict(params.arguments))
        await params.result_callback({"time": "10:30"})

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.tool_calls_next = [[("get_time", {"tz": "Europe/Paris"})]]
        config = VoxtralConfig(
            backend="vllm",
            instructions="Be brief.",
            transcribe_history=False,
            tools={"filler": False},
            vllm={"base_url": server.base_url},
        )
        service = VoxtralLLMService(config, tools=[GET_TIME])
        service.register_function("get_time", get_time)
        async with StageHarness(service) as h:
            await h.send(make_utterance(1.0))
            await h.wait_down(count(LLMFullResponseEndFrame))

    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    assert seen == [{"tz": "Europe/Paris"}]
    assert "".join(_texts(h.down)) == "".join(server.reply_words)  # the answer only, not the call
    first, second = server.requests
    assert first.body["tools"] == [{"type": "function", "function": GET_TIME.to_default_dict()}]
    assert first.body["tool_choice"] == "auto"
    call_msg, tool_msg = second.body["messages"][-2:]
    call = call_msg["tool_calls"][0]
    assert call_msg["role"] == "assistant" and call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {"tz": "Europe/Paris"}
    assert tool_msg == {
        "role": "tool",
        "tool_call_id": call["id"],
        "name": "get_time",
        "content": '{"time": "10:30"}',
    }
    assert second.prompt_tokens > first.prompt_tokens  # mistral-common rendered call and result
    assert [s.generate_calls for s in service.turn_stats] == [2]


async def test_vllm_without_auto_tool_choice_is_a_clear_error(tiny_bundle):
    from tests.vllm_protocol_server import VLLMProtocolServer

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.auto_tool_choice = False
        config = VoxtralConfig(backend="vllm", transcribe_history=False, vllm={"base_url": server.base_url})
        service = VoxtralLLMService(config, tools=[GET_TIME])
        async with StageHarness(service) as h:
            await h.send(make_utterance(1.0))
            await h.wait_up(count(ErrorFrame))
    errors = [f.error for f in h.up if isinstance(f, ErrorFrame)]
    assert "HTTP 400" in errors[0] and "--enable-auto-tool-choice" in errors[0]


def test_a_tool_name_mistral_would_reject_is_refused_at_once():
    bad = FunctionSchema(name="get time!", description="x", properties={}, required=[])
    with pytest.raises(ValueError, match="tool name 'get time!' is not valid for Mistral models"):
        VoxtralLLMService(_config(), tools=[bad])


async def test_a_v11_form_call_streams_parses_and_runs_too(tiny_bundle, monkeypatch):
    """``[TOOL_CALLS]name[ARGS]{...}`` (tokenizers v11+): the streamer hands out both markers."""
    from tests.voxtral_fixtures import tiny_ids
    from voxtral_pipeline.models.tekken import ARGS_TOKEN_ID, EOS_TOKEN_ID

    call = [
        TOOL_CALLS_TOKEN_ID,
        *tiny_ids("get_time"),
        ARGS_TOKEN_ID,
        *tiny_ids('{"tz": "UTC"}'),
        EOS_TOKEN_ID,
    ]
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(call))
    seen = []

    async def get_time(params):
        seen.append(dict(params.arguments))
        await params.result_callback("10:30")

    service = VoxtralLLMService(_config(), bundle=tiny_bundle, tools=[GET_TIME])
    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert seen == [{"tz": "UTC"}]
    assert not any(c in "".join(_texts(h.down)) for c in '[]{}"')


async def test_parallel_calls_a_direct_function_and_the_started_event_come_from_pipecat(
    tiny_bundle, monkeypatch
):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    both = tiny_tool_call(("get_time", {"tz": "UTC"}), ("lookup", {"city": "Paris"}))
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(both))
    ran: list[str] = []

    async def get_time(params):
        ran.append("get_time")
        await params.result_callback({"time": "10:30"})

    async def lookup(params: FunctionCallParams, city: str):
        """Look a city up.

        Args:
            city: The city's name.
        """
        ran.append(f"lookup {city}")
        await params.result_callback({"city": city, "country": "France"})

    service = VoxtralLLMService(
        _config(max_new_tokens=160), bundle=tiny_bundle, tools=ToolsSchema(standard_tools=[GET_TIME, lookup])
    )
    service.register_function("get_time", get_time)
    service.register_direct_function(lookup)
    started: list[list[str]] = []

    @service.event_handler("on_function_calls_started")
    async def on_started(_service, calls):
        started.append([c.function_name for c in calls])

    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert sorted(ran) == ["get_time", "lookup Paris"] and started == [["get_time", "lookup"]]
    prompt = _prompt(tiny_bundle, spy.calls[1]["input_ids"])
    assert '{"time": "10:30"}' in prompt and '{"city": "Paris", "country": "France"}' in prompt
    assert [t.role for t in service.history] == ["user", "assistant", "tool", "tool", "assistant"]
