"""Function calling on the Voxtral stage, driven through the real model code.

The tiny random model is constrained (a logits processor) to write a given function call; the
real tokenizer rendering, token streaming, call parsing, handler running and context code do the
rest, and the model then answers freely.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from loguru import logger
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
    TTSSpeakFrame,
)
from pipecat.services.llm_service import FunctionCallParams

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    ForcedGeneration,
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    tiny_ids,
    tiny_tool_call,
    wait_until,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.models.tekken import ARGS_TOKEN_ID, AUDIO_TOKEN_ID, EOS_TOKEN_ID, TOOL_CALLS_TOKEN_ID
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


# ----------------------------------------------------------------------------------------------
# A call the token limit cuts off: never run, the model is not asked again, the user hears why


@pytest.fixture
def warnings():
    """The warnings logged during the test (loguru's messages)."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    yield lines
    logger.remove(sink)


def _cut_warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if "cut off by the token limit" in line]


def _written_ids(written: str) -> list[int]:
    """Ids of model output with the call's control tokens written as text (tiny tokenizer)."""
    markers = {"[TOOL_CALLS]": TOOL_CALLS_TOKEN_ID, "[ARGS]": ARGS_TOKEN_ID}
    ids: list[int] = []
    for part in re.split(r"(\[TOOL_CALLS\]|\[ARGS\])", written):
        ids.extend([markers[part]] if part in markers else tiny_ids(part))
    return ids


def _vllm_config(base_url: str, **overrides) -> VoxtralConfig:
    values = {
        "backend": "vllm",
        "instructions": "Be brief.",
        "transcribe_history": False,
        "tools": {"filler": False},
        "vllm": {"base_url": base_url},
    }
    return VoxtralConfig(**{**values, **overrides})


async def _cut_turn_then_another(service: VoxtralLLMService) -> StageHarness:
    """A turn whose call the limit cuts, then the next turn; the harness holds their frames."""

    def first_turn_over(frames) -> bool:  # its apology is out, or (what must not be) a call settled
        return count(TTSSpeakFrame)(frames) or count(FunctionCallResultFrame)(frames)

    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.wait_down(first_turn_over)
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
    return h


def _get_time_service(config: VoxtralConfig, bundle=None) -> tuple[VoxtralLLMService, list[dict]]:
    """A stage offering get_time, and the arguments its handler ran with."""
    ran: list[dict] = []

    async def get_time(params):
        ran.append(dict(params.arguments))
        await params.result_callback("10:30")

    service = VoxtralLLMService(config, bundle=bundle, tools=[GET_TIME])
    service.register_function("get_time", get_time)
    return service, ran


def _first_turn(frames) -> list:
    return frames[: next(i for i, f in enumerate(frames) if isinstance(f, LLMFullResponseEndFrame)) + 1]


APOLOGY = "Sorry, something went wrong on my side. Could you say that again?"


@pytest.mark.parametrize(
    "written, name",
    [
        pytest.param("Ok. [TOOL_CALLS]get_time", "get_time", id="v11-name-only"),
        pytest.param('[TOOL_CALLS]get_time[ARGS]{"tz": "Europe/Par', "get_time", id="v11-arguments-cut"),
        pytest.param('[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}', "get_time", id="v11-no-end-of-answer"),
        pytest.param('[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "Eu', "get_time", id="list-form"),
    ],
)
async def test_a_call_cut_by_the_token_limit_is_not_run(tiny_bundle, monkeypatch, warnings, written, name):
    """The limit stops the model inside a call: no handler runs (not even with ``{}``), the
    model is not told (it made no mistake), a warning names the call, and the turn ends with the
    apology; the next turn is answered as usual."""
    ids = _written_ids(written)
    forced = [*ids, *tiny_ids('"}'), EOS_TOKEN_ID]  # what the model would have gone on to write
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(forced))
    service, ran = _get_time_service(_config(max_new_tokens=len(ids)), tiny_bundle)
    h = await _cut_turn_then_another(service)

    assert ran == []
    assert len(spy.calls) == 2  # the cut call, then the next turn: the model was not asked again
    assert spy.calls[0]["output_ids"] == ids  # it was cut where the test meant
    said = written.partition("[TOOL_CALLS]")[0]
    first = _first_turn(h.down)
    assert "".join(_texts(first)) == said  # what came before the call is spoken, nothing of it
    assert not any(
        isinstance(f, (FunctionCallsStartedFrame, FunctionCallInProgressFrame, FunctionCallResultFrame))
        for f in [*h.down, *h.up]
    )
    # The turn ended, then the apology (its own TTS turn, outside the context), then the next turn.
    apology = h.down.index(next(f for f in h.down if isinstance(f, TTSSpeakFrame)))
    assert apology == len(first) and h.down[apology].text == APOLOGY
    assert not h.down[apology].append_to_context
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    cut = _cut_warnings(warnings)
    assert len(cut) == 1 and f"'{name}'" in cut[0] and f"({len(ids)} new tokens)" in cut[0]
    assert "voxtral.max_new_tokens" in cut[0]
    assert service.turn_stats[0].error is not None and "cut off" in service.turn_stats[0].error
    assert service.turn_stats[0].tool_calls == [] and service.turn_stats[1].error is None
    # The context keeps what was said (no call, no result); the next turn was answered after it.
    assert [t.role for t in service.history] == ["user", "assistant", "user", "assistant"]
    assert service.history[1].text == said and service.history[3].text


async def test_the_apology_for_a_cut_call_follows_error_reply(tiny_bundle, monkeypatch):
    ids = [TOOL_CALLS_TOKEN_ID, *tiny_ids("get_time")]
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(ids))
    service = VoxtralLLMService(_config(max_new_tokens=len(ids)), bundle=tiny_bundle, tools=[GET_TIME])
    service.error_reply = ""  # say nothing
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.send(make_utterance(1.0, seed=2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
    assert not [f for f in h.down if isinstance(f, TTSSpeakFrame)]
    assert "cut off" in (service.turn_stats[0].error or "")


async def test_a_call_that_ends_on_the_last_allowed_token_runs(tiny_bundle, monkeypatch):
    """The model's end-of-answer on the last token it may write is no cut: the call runs."""
    call = tiny_tool_call(("get_time", {"tz": "UTC"}))
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(call))
    service, ran = _get_time_service(_config(max_new_tokens=len(call)), tiny_bundle)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert ran == [{"tz": "UTC"}] and service.turn_stats[0].error is None


def test_the_engine_says_whether_the_limit_or_the_model_ended_an_answer(tiny_bundle, monkeypatch):
    from voxtral_pipeline.engine import EngineRequest, VoxtralEngine

    plans = [tiny_ids("abcdef"), [*tiny_ids("ab"), EOS_TOKEN_ID], [*tiny_ids("abc"), EOS_TOKEN_ID]]
    ForcedGeneration(tiny_bundle.model, monkeypatch, lambda prompt: plans.pop(0))
    engine = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
        results = [
            engine.submit(EngineRequest("s", conversation=conversation, max_new_tokens=n)).result(60)
            for n in (4, 8, 4)
        ]
    finally:
        engine.close()
    ends = [(r.finish_reason, r.completion_tokens) for r in results]
    assert ends == [("length", 4), ("stop", 3), ("stop", 4)]  # the last ended on its last token


@pytest.mark.parametrize("finish", ["tool_calls", "length"])
@pytest.mark.parametrize("arguments", ["", '{"tz": "Europe/Pa'], ids=["name-only", "arguments-cut"])
async def test_vllm_a_call_cut_by_max_tokens_is_not_run(tiny_bundle, warnings, finish, arguments):
    """vLLM says ``tool_calls`` even for a call ``max_tokens`` cut (``length`` if it did not parse
    one): either way the usage shows the limit was reached, and nothing runs (a name alone used to
    run the handler with ``{}``)."""
    from tests.vllm_protocol_server import VLLMProtocolServer

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.tool_calls_next = [[("get_time", arguments)]]
        server.cut_next = finish
        service, ran = _get_time_service(_vllm_config(server.base_url, max_new_tokens=12))
        h = await _cut_turn_then_another(service)

    assert ran == []
    assert len(server.requests) == 2  # the cut call, then the next turn
    assert not any("tool_calls" in m for m in server.requests[1].body["messages"])
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    assert [f.text for f in h.down if isinstance(f, TTSSpeakFrame)] == [APOLOGY]
    assert "".join(_texts(h.down)) == "".join(server.reply_words)  # the second turn's answer
    cut = _cut_warnings(warnings)
    assert len(cut) == 1 and "'get_time'" in cut[0] and "(12 new tokens)" in cut[0]


async def test_vllm_a_call_within_max_tokens_still_runs(tiny_bundle):
    from tests.vllm_protocol_server import VLLMProtocolServer

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.tool_calls_next = [[("get_time", {"tz": "UTC"})]]
        # The stand-in counts the call as 3 tokens, and the end of sequence: 4 of the 5 allowed.
        service, ran = _get_time_service(_vllm_config(server.base_url, max_new_tokens=5))
        async with StageHarness(service) as h:
            await h.send(make_utterance(1.0))
            await h.wait_down(count(LLMFullResponseEndFrame))
    assert ran == [{"tz": "UTC"}] and service.turn_stats[0].error is None


def _nothing_said_warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if "before anything could be said" in line]


async def test_vllm_an_answer_cut_before_the_function_name_is_told_too(tiny_bundle, warnings):
    """Cut right after the call marker, vLLM streams no text and no call, with ``length``: the
    turn is not left mute, it warns and apologises like a cut call; the next turn is answered."""
    from tests.vllm_protocol_server import VLLMProtocolServer

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.tool_calls_next = [[]]  # the marker, then the limit
        server.cut_next = "length"
        service, ran = _get_time_service(_vllm_config(server.base_url, max_new_tokens=12))
        h = await _cut_turn_then_another(service)

    assert ran == [] and len(server.requests) == 2
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    assert "".join(_texts(_first_turn(h.down))) == ""
    assert [f.text for f in h.down if isinstance(f, TTSSpeakFrame)] == [APOLOGY]
    assert h.down.index(next(f for f in h.down if isinstance(f, TTSSpeakFrame))) == len(_first_turn(h.down))
    cut = _nothing_said_warnings(warnings)
    assert len(cut) == 1 and "(12 new tokens)" in cut[0] and "voxtral.max_new_tokens" in cut[0]
    assert cut[0] in _cut_warnings(warnings)  # the same kind of warning as a cut call's
    assert "cut off" in (service.turn_stats[0].error or "") and service.turn_stats[1].error is None
    assert "".join(_texts(h.down)) == "".join(server.reply_words)  # the second turn's answer


async def test_vllm_an_answer_that_ends_with_nothing_is_not_a_cut(tiny_bundle, warnings):
    """Nothing said but the model ended it (no limit): no warning, no apology."""
    from tests.vllm_protocol_server import VLLMProtocolServer

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        server.tool_calls_next = [[]]
        service, _ = _get_time_service(_vllm_config(server.base_url, max_new_tokens=12))
        async with StageHarness(service) as h:
            await h.send(make_utterance(1.0))
            await h.wait_down(count(LLMFullResponseEndFrame))
    assert not [f for f in h.down if isinstance(f, TTSSpeakFrame)]
    assert not _cut_warnings(warnings) and service.turn_stats[0].error is None


@pytest.mark.parametrize(
    "ids, empty_call",
    [
        pytest.param([TOOL_CALLS_TOKEN_ID], True, id="call-marker-alone"),
        pytest.param(tiny_ids("  "), False, id="only-whitespace"),
    ],
)
async def test_an_engine_answer_cut_before_it_said_anything_is_told(
    tiny_bundle, monkeypatch, warnings, ids, empty_call
):
    """The in-process engine, the same rule: the limit ends the answer with nothing spoken (the
    call marker alone, or no speakable text yet): one warning naming the limit, the apology."""
    forced = [*ids, *tiny_ids("Hi"), EOS_TOKEN_ID]
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    ForcedGeneration(tiny_bundle.model, monkeypatch, _force_on_new_turns(forced))
    service, ran = _get_time_service(_config(max_new_tokens=len(ids)), tiny_bundle)
    h = await _cut_turn_then_another(service)

    assert ran == [] and len(spy.calls) == 2 and spy.calls[0]["output_ids"] == ids
    assert not "".join(_texts(_first_turn(h.down))).strip()
    apology = h.down.index(next(f for f in h.down if isinstance(f, TTSSpeakFrame)))
    assert apology == len(_first_turn(h.down)) and h.down[apology].text == APOLOGY
    cut = _cut_warnings(warnings)
    assert len(cut) == 1 and f"({len(ids)} new tokens)" in cut[0] and "voxtral.max_new_tokens" in cut[0]
    assert bool(_nothing_said_warnings(warnings)) is not empty_call  # the marker: a call, nameless
    assert "cut off" in (service.turn_stats[0].error or "") and service.turn_stats[1].error is None
