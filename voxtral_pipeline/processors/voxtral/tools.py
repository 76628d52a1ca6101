"""Voxtral's function calls in its token stream: where they start, and how they are parsed.

Tools, handlers and running are pipecat's own (``LLMService.register_function``, direct
functions, ``LLMSetToolsFrame``; see :mod:`.tool_round`); this module only reads what Voxtral
writes. Voxtral writes a call after its ``[TOOL_CALLS]`` control token, in one of two forms depending on
the tokenizer version (both are parsed, like vLLM's Mistral tool parser):

* before v11: ``[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}]``
* v11 and later: ``[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}`` (optionally ``[CALL_ID]id`` before
  ``[ARGS]``), one ``[TOOL_CALLS]`` per call.

:class:`ToolCallStream` sits between the token stream and the chunker: text before the marker is
spoken, everything from the marker on is held back and parsed when the model stops. A call that
cannot be parsed carries its error, which goes back to the model as the call's result. A call cut
off by the token limit is another matter (the model did nothing wrong, and its name or arguments
may be partial): it is never run nor sent back; :func:`cut_off_message` says what was lost. An
answer the limit ended with neither text nor a call is told the same way (:func:`nothing_said_message`).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.services.llm_service import FunctionCallParams

#: The control tokens of a call, as the token streamer hands them out (their string form).
TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"

_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # mistral-common's rule for function names
_ID_OK = re.compile(r"^[a-zA-Z0-9]{9}$")  # and for call ids
_ALNUM = string.ascii_letters + string.digits
# A call object's name in the list form (not an argument's "name": those follow "arguments": ).
_LISTED_NAME = re.compile(r'(?:^|\[|\},)\s*\{\s*"name"\s*:\s*"([^"]*)')

FunctionHandler = Callable[[FunctionCallParams], Awaitable[Any]]


def new_call_id() -> str:
    """A Mistral tool-call id: 9 alphanumeric characters (mistral-common rejects anything else)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


@dataclass
class ToolCall:
    """One call the model made, as parsed (``error`` set when it could not be used as is).

    Parameters:
        name: Function name (made valid for mistral-common if the model's was not).
        arguments: Parsed JSON arguments (``{}`` when they could not be parsed).
        id: 9-character call id (the model's own when it gave a valid one).
        error: Why the call cannot run; sent back to the model as the call's result.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_call_id)
    error: str | None = None

    def openai(self) -> dict[str, Any]:
        """The call in OpenAI chat format (what mistral-common and vLLM both accept)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


# ----------------------------------------------------------------------------------------------
# Parsing


def _valid_name(raw: Any) -> str:
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(raw or "").strip())[:64]
    return name or "invalid_call"


def _json_prefix(text: str) -> tuple[Any, str | None]:
    """The JSON value at the start of ``text`` (trailing junk ignored), or an error message."""
    text = text.strip()
    if not text:
        return None, "no JSON found"
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
        return value, None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at position {e.pos})"


def _arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if raw is None:
        return {}, None
    if isinstance(raw, str):  # OpenAI style: arguments as a JSON string
        if not raw.strip():
            return {}, None
        raw, error = _json_prefix(raw)
        if error:
            return {}, f"arguments are not valid JSON: {error}"
    if not isinstance(raw, dict):
        return {}, f"arguments must be a JSON object, got {type(raw).__name__}"
    return raw, None


def _call(name: Any, raw_args: Any, call_id: Any = None, error: str | None = None) -> ToolCall:
    arguments, arg_error = _arguments(raw_args)
    call = ToolCall(_valid_name(name), arguments, error=error or arg_error)
    if isinstance(call_id, str) and _ID_OK.match(call_id):
        call.id = call_id
    if call.error is None and not _NAME_OK.match(str(name or "")):
        call.error = f"{str(name)[:64]!r} is not a valid function name"
    return call


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Parse what followed ``[TOOL_CALLS]`` (the marker itself may be included or not).

    Never raises: a call that cannot be parsed comes back with ``error`` set, so the model is told.
    """
    pieces = [p for p in text.split(TOOL_CALLS) if p.strip()]
    calls: list[ToolCall] = []
    for piece in pieces:
        if ARGS in piece:  # v11+: name[CALL_ID]id[ARGS]{...}
            head, _, args_text = piece.partition(ARGS)
            name, _, call_id = head.partition(CALL_ID)
            value, error = _json_prefix(args_text)
            calls.append(
                _call(
                    name.strip(),
                    value,
                    call_id.strip(),
                    f"arguments are not valid JSON: {error}" if error else None,
                )
            )
            continue
        value, error = _json_prefix(piece)  # before v11: a JSON list of {"name", "arguments"}
        if error is None and isinstance(value, dict):
            value = [value]
        if error is not None or not isinstance(value, list) or not value:
            snippet = piece.strip()[:80]
            calls.append(
                _call(
                    None,
                    None,
                    error=f"the tool call could not be parsed: {error or 'not a list'}: {snippet!r}",
                )
            )
            continue
        for item in value:
            if not isinstance(item, dict) or "name" not in item:
                calls.append(_call(None, None, error="a tool call must be an object with a name"))
                continue
            calls.append(_call(item.get("name"), item.get("arguments"), item.get("id")))
    if not calls:
        calls.append(_call(None, None, error="the tool call was empty"))
    return calls


class ToolCallStream:
    """Splits the streamed answer: speakable text before ``[TOOL_CALLS]``, the call after it.

    The token streamer hands each control token out whole, so the marker never straddles deltas.
    """

    def __init__(self) -> None:
        self._tool_text: list[str] | None = None
        self._structured: list[ToolCall] = []

    def add_calls(self, calls: list[ToolCall]) -> None:
        """Calls that came already parsed (a vLLM server's ``tool_calls`` deltas)."""
        self._structured.extend(calls)

    @property
    def in_call(self) -> bool:
        return self._tool_text is not None

    def feed(self, text: str) -> str:
        """Return the part of ``text`` to speak (empty once a call has started)."""
        if self._tool_text is not None:
            self._tool_text.append(text)
            return ""
        before, marker, after = text.partition(TOOL_CALLS)
        if marker:
            self._tool_text = [after]
        return before

    def calls(self) -> list[ToolCall]:
        """The calls made (none when the model just answered)."""
        calls = list(self._structured)
        if self._tool_text is not None:
            calls.extend(parse_tool_calls("".join(self._tool_text)))
        return calls

    def names(self) -> list[str]:
        """The functions the model began to call, each name as far as it was written (for messages)."""
        names = [c.name for c in self._structured]
        for piece in "".join(self._tool_text or []).split(TOOL_CALLS):
            if ARGS in piece or not piece.lstrip().startswith(("[", "{")):  # v11+: the name first
                name = piece.partition(ARGS)[0].partition(CALL_ID)[0].strip()
                names.extend([name] if name else [])
            else:
                names.extend(n for n in _LISTED_NAME.findall(piece.strip()) if n)
        return names


def openai_tool_calls(deltas: dict[int, dict[str, str]]) -> list[ToolCall]:
    """Calls assembled from streamed OpenAI ``tool_calls`` deltas (by index: id, name, arguments)."""
    return [_call(d.get("name"), d.get("arguments") or "", d.get("id")) for _, d in sorted(deltas.items())]


def cut_off_message(names: list[str], max_new_tokens: int) -> str:
    """What a log says when the token limit cut the answer inside a function call."""
    limit = f"by the token limit ({max_new_tokens} new tokens)"
    if not names:
        what = f"a function call was cut off {limit} before its name was written; nothing is run"
    elif len(names) == 1:
        what = f"the function call to {names[0][:64]!r} was cut off {limit} and is not run"
    else:
        listed = ", ".join(repr(n[:64]) for n in names)
        what = f"the last of the function calls to {listed} was cut off {limit}; none of them is run"
    return f"{what}; raise voxtral.max_new_tokens (or the max_tokens setting) above the longest call"


def nothing_said_message(max_new_tokens: int) -> str:
    """What a log says when the token limit ended an answer that had neither spoken text nor a call.

    The model was most likely starting a function call (vLLM streams nothing after the call
    marker until the name is complete) or had written only what cannot be spoken yet.
    """
    return (
        f"the answer was cut off by the token limit ({max_new_tokens} new tokens) before anything could "
        "be said (the model may have been starting a function call); nothing is run; raise "
        "voxtral.max_new_tokens (or the max_tokens setting)"
    )


def check_function_name(name: str) -> None:
    """Refuse at once a tool name mistral-common would reject at the first request."""
    if not _NAME_OK.match(name):
        raise ValueError(f"tool name {name!r} is not valid for Mistral models: use 1-64 of a-z A-Z 0-9 _ -")
