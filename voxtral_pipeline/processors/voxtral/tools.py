"""Function calling for the Voxtral stage, the pipecat way.

Tools are declared as pipecat ``FunctionSchema`` / ``ToolsSchema`` and their handlers registered
with :meth:`ToolRegistry.register_function`, which has the shape of pipecat's
``LLMService.register_function``: a handler takes pipecat's ``FunctionCallParams`` (``arguments``,
``result_callback``, ``llm``: the stage, to push frames such as ``EndTaskFrame``).

Voxtral writes a call after its ``[TOOL_CALLS]`` control token, in one of two forms depending on
the tokenizer version (both are parsed, like vLLM's Mistral tool parser):

* before v11: ``[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}]``
* v11 and later: ``[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}`` (optionally ``[CALL_ID]id`` before
  ``[ARGS]``), one ``[TOOL_CALLS]`` per call.

:class:`ToolCallStream` sits between the token stream and the chunker: text before the marker is
spoken, everything from the marker on is held back and parsed when the model stops. A call that
cannot be parsed, names an unknown function, raises or runs past its timeout becomes an error
*result* that goes back to the model, which then answers the user; nothing crashes the turn.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams

#: The control tokens of a call, as the token streamer hands them out (their string form).
TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"

_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # mistral-common's rule for function names
_ID_OK = re.compile(r"^[a-zA-Z0-9]{9}$")  # and for call ids
_ALNUM = string.ascii_letters + string.digits

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


@dataclass
class ToolResult:
    """What a call returned (or the error that stands in for a result)."""

    call: ToolCall
    result: Any = None
    error: str | None = None
    properties: FunctionCallResultProperties | None = None
    cancelled: bool = False

    def content(self) -> str:
        """The tool message's content: a string as is, anything else as JSON."""
        if self.error is not None:
            return json.dumps({"error": self.error}, ensure_ascii=False)
        if isinstance(self.result, str):
            return self.result
        return json.dumps(self.result, ensure_ascii=False, default=str)


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


def openai_tool_calls(deltas: dict[int, dict[str, str]]) -> list[ToolCall]:
    """Calls assembled from streamed OpenAI ``tool_calls`` deltas (by index: id, name, arguments)."""
    return [_call(d.get("name"), d.get("arguments") or "", d.get("id")) for _, d in sorted(deltas.items())]


# ----------------------------------------------------------------------------------------------
# Registry and running


@dataclass
class RegisteredFunction:
    name: str | None
    handler: FunctionHandler
    timeout_secs: float | None = None
    cancel_on_interruption: bool = True


class ToolRegistry:
    """The tools a session offers (schemas) and the handlers that run them."""

    def __init__(self, tools: ToolsSchema | Sequence[FunctionSchema] | None = None):
        self._schemas: dict[str, FunctionSchema] = {}
        self._functions: dict[str | None, RegisteredFunction] = {}
        if tools is not None:
            self.set_tools(tools)

    def set_tools(self, tools: ToolsSchema | Sequence[FunctionSchema]) -> None:
        """Offer these functions to the model (a schema with a ``handler`` registers it too)."""
        schemas = tools.standard_tools if isinstance(tools, ToolsSchema) else list(tools)
        self._schemas = {}
        for schema in schemas:
            if not _NAME_OK.match(schema.name):
                raise ValueError(
                    f"tool name {schema.name!r} is not valid for Mistral models: use 1-64 of a-z A-Z 0-9 _ -"
                )
            self._schemas[schema.name] = schema
            if schema.handler is not None and schema.name not in self._functions:
                self.register_function(schema.name, schema.handler)

    def register_function(
        self,
        function_name: str | None,
        handler: FunctionHandler,
        *,
        timeout_secs: float | None = None,
        cancel_on_interruption: bool = True,
    ) -> None:
        """Register a handler, as pipecat's ``LLMService.register_function`` (None: catch-all).

        ``cancel_on_interruption=False`` is accepted for compatibility, but a call always holds
        the answer here (a voice turn cannot answer before its result), so it is cancelled too.
        """
        self._functions[function_name] = RegisteredFunction(
            function_name, handler, timeout_secs, cancel_on_interruption
        )

    def unregister_function(self, function_name: str | None) -> None:
        self._functions.pop(function_name, None)

    def has_function(self, function_name: str) -> bool:
        return function_name in self._functions or None in self._functions

    def function(self, function_name: str) -> RegisteredFunction | None:
        return self._functions.get(function_name) or self._functions.get(None)

    @property
    def schemas(self) -> list[FunctionSchema]:
        return list(self._schemas.values())

    def __bool__(self) -> bool:
        return bool(self._schemas)

    def mistral_tools(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI/Mistral request format (``{"type": "function", "function": ...}``)."""
        return [{"type": "function", "function": s.to_default_dict()} for s in self._schemas.values()]


async def run_tool_call(
    call: ToolCall,
    registry: ToolRegistry,
    make_params: Callable[[ToolCall, Callable[..., Awaitable[None]]], FunctionCallParams],
    *,
    timeout_secs: float,
    start_task: Callable[[Awaitable[Any], str], asyncio.Task],
    cancel_task: Callable[[asyncio.Task], Awaitable[None]],
) -> ToolResult:
    """Run one call's handler until its first final result, an error or the timeout.

    Cancelling the awaiting task (an interruption) cancels the handler too. A handler that
    returns without calling ``result_callback`` has its return value taken as the result.
    """
    if call.error is not None:
        return ToolResult(call, error=call.error)
    if call.name not in registry._schemas:
        return ToolResult(call, error=f"there is no function named {call.name!r}")
    entry = registry.function(call.name)
    if entry is None:
        return ToolResult(call, error=f"the function {call.name!r} has no handler")

    loop = asyncio.get_running_loop()
    settled: asyncio.Future[ToolResult] = loop.create_future()

    async def result_callback(result: Any, *, properties: FunctionCallResultProperties | None = None) -> None:
        if properties is not None and not properties.is_final:
            logger.debug(
                f"tool {call.name}: intermediate result ignored (a voice turn waits for the final one)"
            )
            return
        if not settled.done():
            settled.set_result(ToolResult(call, result=result, properties=properties))

    async def run_handler() -> None:
        try:
            returned = await entry.handler(make_params(call, result_callback))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.opt(exception=e).debug(f"tool {call.name} raised")
            if not settled.done():
                settled.set_result(ToolResult(call, error=f"the function failed: {type(e).__name__}: {e}"))
            return
        if not settled.done():
            settled.set_result(ToolResult(call, result=returned))

    timeout = entry.timeout_secs if entry.timeout_secs is not None else timeout_secs
    task = start_task(run_handler(), f"tool-{call.name}-{call.id}")
    try:
        # A handler may go on after its result (an end-call tool pushes EndTaskFrame after it):
        # it is left to finish then, and cancelled only on a timeout or an interruption.
        return await asyncio.wait_for(asyncio.shield(settled), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        logger.warning(f"tool {call.name} timed out after {timeout:g} s; the model is told")
        await cancel_task(task)
        return ToolResult(call, error=f"the function timed out after {timeout:g} seconds")
    except asyncio.CancelledError:
        if not task.done():
            await cancel_task(task)
        raise
