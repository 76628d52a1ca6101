"""One answer in flight: what it has sent, how it is stopped, whether it is held back (speculative)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voxtral_pipeline.engine import EngineResult
from voxtral_pipeline.processors.voxtral.stats import TurnStats

if TYPE_CHECKING:
    from voxtral_pipeline.processors.voxtral.speculation import Speculation


@dataclass(eq=False)
class Answer:
    """An answer and what it has sent downstream so far.

    ``cancel`` stops the model within one decode step (any thread may set it); ``stopped`` says
    nothing more is sent. A speculative answer (``speculation`` set) holds its frames until its
    turn is confirmed; if it is discarded instead, the engine work it did is billed to the next
    turn (:meth:`discard`), even when the engine finishes after the discard.
    """

    index: int
    stats: TurnStats
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task | None = None
    text_parts: list[str] = field(default_factory=list)
    closed: bool = False
    stopped: bool = False
    # Characters of ``text`` already in the context (said before a function call).
    context_chars: int = 0
    speculation: Speculation | None = None
    _results: list[EngineResult] = field(default_factory=list)
    _bill: Callable[[EngineResult], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def stop(self) -> None:
        """Send nothing more and stop the model."""
        self.stopped = True
        self.cancel.set()

    def engine_finished(self, result: EngineResult) -> None:
        """One of its requests ended (called on the engine thread)."""
        with self._lock:
            self._results.append(result)
            bill = self._bill
        if bill is not None:
            bill(result)

    def discard(self, bill: Callable[[EngineResult], None]) -> None:
        """Withdrawn unheard: stop it, and bill what the engine did (now or when it ends)."""
        self.closed = True
        self.stop()
        with self._lock:
            self._bill = bill
            done = list(self._results)
        for result in done:
            bill(result)
