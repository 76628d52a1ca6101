"""The conversation window: a long session drops whole old exchanges in blocks, never half a call."""

from __future__ import annotations

import numpy as np

from voxtral_pipeline.models.voxtral import SAMPLE_RATE
from voxtral_pipeline.processors.voxtral.context import VoxtralContext
from voxtral_pipeline.processors.voxtral.tools import ToolCall


def _speech(secs: float = 0.5) -> np.ndarray:
    return np.full(int(secs * SAMPLE_RATE), 0.1, np.float32)


def _exchange(context: VoxtralContext, i: int, *, with_call: bool = False) -> None:
    context.add_user(_speech())
    if with_call:
        call = ToolCall(name="lookup", arguments={"i": i})
        context.llm_context.add_message({"role": "assistant", "content": "", "tool_calls": [call.openai()]})
        context.llm_context.add_message(
            {"role": "tool", "tool_call_id": call.id, "content": f'{{"value": {i}}}'}
        )
    context.add_assistant(f"answer {i}")


def test_the_window_drops_the_oldest_quarter_at_once_and_keeps_calls_with_their_results():
    context = VoxtralContext("Be brief.", audio_turns=2, max_user_turns=8)
    for i in range(8):
        _exchange(context, i, with_call=i % 2 == 1)
    assert len(context.user_turns) == 8 and context.dropped_user_turns == 0

    _exchange(context, 8, with_call=True)  # the ninth user turn: back to 6 at once
    assert len(context.user_turns) == 6 and context.dropped_user_turns == 3
    assert [t.text for t in context.turns if t.role == "assistant" and not t.tool_calls][0] == "answer 3"
    assert context.turns[0].role == "user"
    call_ids = {c["id"] for t in context.turns if t.tool_calls for c in t.tool_calls}
    result_ids = {t.tool_call_id for t in context.turns if t.role == "tool"}
    assert call_ids == result_ids and call_ids

    # The prefix then stays put until the window is full again.
    first = context.turns[0]
    _exchange(context, 9)
    _exchange(context, 10)
    assert context.turns[0].message is first.message and len(context.user_turns) == 8

    messages = context.render()
    assert messages[0]["role"] == "user"  # the instructions still open the conversation
    assert "Be brief." in str(messages[0]["content"])


def test_a_withdrawn_newest_turn_leaves_the_same_window_as_no_speculation():
    plain = VoxtralContext(None, audio_turns=2, max_user_turns=4)
    speculative = VoxtralContext(None, audio_turns=2, max_user_turns=4)
    for context in (plain, speculative):
        for i in range(4):
            _exchange(context, i)
    withdrawn = speculative.add_user(_speech())  # a speculative turn that trims the window...
    speculative.remove(withdrawn)  # ...and is then withdrawn (the user went on speaking)
    plain.add_user(_speech(1.0))
    speculative.add_user(_speech(1.0))
    assert [t.text for t in plain.turns] == [t.text for t in speculative.turns]
    assert [t.duration_secs for t in plain.user_turns] == [t.duration_secs for t in speculative.user_turns]


def test_no_window_keeps_everything():
    context = VoxtralContext(None, audio_turns=2)
    for i in range(30):
        _exchange(context, i)
    assert len(context.user_turns) == 30 and context.dropped_user_turns == 0
