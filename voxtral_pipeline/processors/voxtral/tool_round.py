"""One round of function calls in an answer, run by pipecat's own ``LLMService`` machinery.

The calls Voxtral wrote (parsed by :mod:`.tools`) go to ``LLMService.run_function_calls``:
pipecat finds the handlers (``register_function``, direct functions, tools advertised in the
context), runs them in parallel or in sequence, applies ``function_call_timeout_secs``, fires
``on_function_calls_started`` and broadcasts the ``FunctionCall*`` frames. Who writes the calls
and results into the ``LLMContext`` and starts the answer after them depends on the pipeline:

* with pipecat's assistant aggregator (a shared context), the aggregator does, as for any
  pipecat LLM: the round ends the response, and the aggregator's ``LLMContextFrame`` after the
  results starts the next completion;
* without one (the project's own pipeline), this round does the aggregator's part: it writes
  the calls and their results (``IN_PROGRESS`` until settled, then the result, ``CANCELLED`` or
  the error) and, once every call is settled, tells the stage to answer in the same turn.

A call Voxtral wrote that cannot be parsed is settled at once with its error as the result, so
the model hears what went wrong. A filler is said while slow handlers run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import (
    FunctionCallCancelFrame,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
)

from voxtral_pipeline.processors.voxtral.stats import ToolCallRecord
from voxtral_pipeline.processors.voxtral.tools import ToolCall

if TYPE_CHECKING:
    from voxtral_pipeline.processors.voxtral.processor import VoxtralLLMService

IN_PROGRESS = "IN_PROGRESS"  # the content pipecat's aggregator gives a running call's result
CANCELLED = "CANCELLED"


def result_content(result: Any) -> str:
    """A tool message's content, as pipecat's assistant aggregator writes it."""
    return json.dumps(result, ensure_ascii=False, default=str) if result else "COMPLETED"


class ToolRound:
    """The calls of one answer: handed to pipecat, settled, and (without an aggregator) recorded."""

    def __init__(
        self,
        service: VoxtralLLMService,
        calls: list[ToolCall],
        *,
        said: str,
        record: bool,
        records: list[ToolCallRecord],
        say: Callable[[], Awaitable[None]] | None = None,
        filler_after_s: float | None = None,
    ):
        self._service = service
        self._calls = calls
        self._said = said
        self._record = record
        self._records = records
        self._say = say
        self._filler_after_s = filler_after_s
        self._pending: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}

    async def run(self) -> bool:
        """Run the round; True when this stage should answer the results now (no aggregator)."""
        service = self._service
        loop = asyncio.get_running_loop()
        if self._record:
            context = service.llm_context
            context.add_message(
                {"role": "assistant", "content": self._said, "tool_calls": [c.openai() for c in self._calls]}
            )
            for call in self._calls:
                message = {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": IN_PROGRESS}
                self._messages[call.id] = message
                context.add_message(message)  # type: ignore[arg-type]
        valid = [c for c in self._calls if c.error is None]
        for call in self._calls:
            self._pending[call.id] = loop.create_future()
            self._started[call.id] = time.perf_counter()
        filler = self._start_filler()
        try:
            for call in self._calls:
                if call.error is not None:  # Voxtral's call could not be parsed: the model is told why
                    await self._settle_malformed(call)
            if valid:
                await service.run_function_calls(
                    [FunctionCallFromLLM(c.name, c.id, c.arguments, service.llm_context) for c in valid]
                )
            if not self._record:
                return False  # the aggregator writes the results and asks for the next completion
            outcomes = await asyncio.gather(*self._pending.values())
        except asyncio.CancelledError:
            for call_id, future in self._pending.items():
                if not future.done():
                    self._write(call_id, CANCELLED, error="cancelled: the user interrupted")
            raise
        finally:
            if filler is not None and not filler.done():
                await service.cancel_task(filler)
        return any(run_llm for _, run_llm in outcomes)

    def settle(self, frame: FunctionCallResultFrame | FunctionCallCancelFrame) -> None:
        """A call's end, as pipecat broadcasts it (seen on the way out of the stage)."""
        future = self._pending.get(frame.tool_call_id)
        if future is None or future.done():
            return
        if isinstance(frame, FunctionCallCancelFrame):
            self._write(frame.tool_call_id, CANCELLED, error="cancelled")
            future.set_result((CANCELLED, frame.run_llm is not False))
            return
        if frame.properties is not None and not frame.properties.is_final:
            return  # an intermediate update: a voice turn waits for the final result
        content = result_content(frame.result)
        self._write(frame.tool_call_id, content, error=frame.error, result=frame.result)
        run_llm = True
        if frame.properties is not None and frame.properties.run_llm is not None:
            run_llm = frame.properties.run_llm
        elif frame.run_llm is not None:
            run_llm = frame.run_llm
        future.set_result((content, run_llm))
        if frame.properties is not None and frame.properties.on_context_updated is not None:
            self._service.create_task(
                frame.properties.on_context_updated(), f"tool-context-updated-{frame.tool_call_id}"
            )

    async def _settle_malformed(self, call: ToolCall) -> None:
        """The frames pipecat sends for a call, with the parse error as its result."""
        error = {"error": call.error}
        await self._service.broadcast_frame(
            FunctionCallInProgressFrame,
            function_name=call.name,
            tool_call_id=call.id,
            arguments=call.arguments,
            cancel_on_interruption=True,
        )
        await self._service.broadcast_frame(
            FunctionCallResultFrame,
            function_name=call.name,
            tool_call_id=call.id,
            arguments=call.arguments,
            result=error,
            error=call.error,
        )

    def _write(self, call_id: str, content: str, *, error: str | None = None, result: Any = None) -> None:
        call = next(c for c in self._calls if c.id == call_id)
        ms = (time.perf_counter() - self._started.get(call_id, time.perf_counter())) * 1000
        self._records.append(ToolCallRecord(call.name, call.arguments, result, error, ms))
        message = self._messages.get(call_id)
        if message is not None:
            message["content"] = content

    def _start_filler(self) -> asyncio.Task | None:
        if self._say is None or self._filler_after_s is None:
            return None
        return self._service.create_task(self._filler(self._filler_after_s), "tool-filler")

    async def _filler(self, delay: float) -> None:
        """Say the filler if the handlers still run after ``delay`` (it is part of the answer)."""
        await asyncio.sleep(delay)
        if self._say is not None and any(not f.done() for f in self._pending.values()):
            logger.debug(f"{self._service}: handlers still running after {delay:g} s: saying the filler")
            await self._say()
