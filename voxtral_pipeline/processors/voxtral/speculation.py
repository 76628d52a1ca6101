"""Speculative start: answer the user's audio at the VAD stop, before Smart Turn confirms the turn.

The turn stage sends a :class:`~voxtral_pipeline.frames.SpeculativeUtteranceFrame` at every VAD
stop inside a turn. The Voxtral stage starts an ordinary inference on it, with two differences:
every frame of the answer is held back here instead of going downstream, and the answer is not
put into the conversation. Then either

* the turn's ``UserUtteranceFrame`` arrives with ``confirms_speculation`` (no speech since): the
  held frames go downstream at once, the answer goes on streaming and enters the conversation as
  any answer does, and the time saved is recorded; or
* the user went on speaking (a ``SpeculationCancelFrame``, a turn that does not confirm, an
  interruption, the end of the session): the inference is cancelled, its user turn taken out of
  the conversation, and nothing of it was ever heard. The session's KV cache is only ever reused
  up to the common prefix of the next prompt, so the discarded answer changes no later answer.

Pipecat's ``SpeculationGate`` holds a speculative response the same way, but it is released by
any ``UserStoppedSpeakingFrame``, a system frame that can overtake the (ordered)
``SpeculationCancelFrame`` on its way here; the confirmation has to be the turn stage's verdict,
in order with the utterance it confirms, so this small holder replaces it.

Speculation is skipped while the stage offers tools: a speculative answer must not run
functions with side effects for a turn the user has not finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from loguru import logger
from pipecat.frames.frames import Frame, LLMTextFrame

from voxtral_pipeline.frames import SpeculativeUtteranceFrame, UserUtteranceFrame
from voxtral_pipeline.processors.voxtral.context import ContextTurn

if TYPE_CHECKING:
    from voxtral_pipeline.processors.voxtral.answer import Answer


@dataclass
class Speculation:
    """A speculative answer's own state: its user turn, and the frames held back until confirmation."""

    user: ContextTurn
    started_at: float = field(default_factory=time.time)
    held: list[Frame] = field(default_factory=list)
    first_token_at: float | None = None
    finished: bool = False  # generation ended while still unconfirmed
    calls_before: int = 0  # the stage's generate_calls when it started

    def hold(self, frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame) and self.first_token_at is None:
            self.first_token_at = time.time()
        self.held.append(frame)

    def saved_secs(self, confirmed_at: float) -> float:
        """How much sooner the first token is out than if the inference had started at confirmation.

        Started at confirmation, the first token would have come ``F`` (the inference's time to
        first token) after it; started at the VAD stop, it is out at ``max(confirmation, start + F)``.
        """
        first = self.first_token_at if self.first_token_at is not None else confirmed_at
        return max(0.0, min(confirmed_at, first) - self.started_at)


class SpeculationHost(Protocol):
    """What the speculative start needs of the stage (the stage implements it; no import of it here)."""

    def can_speculate(self) -> bool:
        """No answer is streaming and no function is offered (none may run for an unfinished turn)."""

    async def start_speculative(self, utterance: UserUtteranceFrame) -> None:
        """Start an answer whose frames are held (it sets ``SpeculativeStarts.turn``)."""

    def adopt(self, answer: Answer, finished: bool) -> None:
        """Count a confirmed answer as the turn's (its stats; the current answer unless finished)."""

    async def release(self, frame: Frame) -> None:
        """Push a held frame downstream."""

    def finish(self, answer: Answer) -> None:
        """An answer that ended before confirmation: into the context, then the idle work."""

    async def withdraw(self, answer: Answer) -> None:
        """Stop a discarded answer, bill its work, and take its user turn out of the conversation."""


class SpeculativeStarts:
    """The Voxtral stage's speculative answer (at most one at a time) and what became of them."""

    def __init__(self, host: SpeculationHost) -> None:
        self._host = host
        self.turn: Answer | None = None  # the speculative answer (its .speculation set)
        self.confirmed = 0
        self.discarded = 0

    async def start(self, frame: SpeculativeUtteranceFrame) -> None:
        """Start answering the audio so far (replacing an earlier speculation of the same turn)."""
        await self.discard("a later pause superseded it")
        if self._host.can_speculate():
            await self._host.start_speculative(frame.utterance)

    async def settle(self, frame: UserUtteranceFrame) -> bool:
        """At the end of the turn: release the speculative answer (True) or discard it (False)."""
        if self.turn is None:
            return False
        if frame.confirms_speculation and not self.turn.stats.error:
            await self._confirm()
            return True
        why = "it failed; the turn is answered afresh" if frame.confirms_speculation else "the user went on"
        await self.discard(why)
        return False

    async def _confirm(self) -> None:
        turn, self.turn = self.turn, None
        assert turn is not None and turn.speculation is not None
        spec = turn.speculation
        saved = spec.saved_secs(time.time())
        turn.stats.speculation_saved_ms = round(saved * 1000, 1)
        turn.stats.speculative = True
        self.confirmed += 1
        self._host.adopt(turn, finished=spec.finished)
        # Frames the still-running answer holds while these are pushed join the queue being drained;
        # it is switched to pushing directly only once the queue is empty, so the order is kept.
        while spec.held:
            await self._host.release(spec.held.pop(0))
        turn.speculation = None
        logger.debug(f"speculative answer to turn {turn.index} confirmed, {saved * 1000:.0f} ms saved")
        if spec.finished:
            self._host.finish(turn)

    async def discard(self, why: str) -> None:
        """Cancel the speculative answer, unheard, and take its user turn out of the conversation."""
        turn, self.turn = self.turn, None
        if turn is None:
            return
        await self._host.withdraw(turn)
        if turn.speculation is not None:
            turn.speculation.held.clear()
        self.discarded += 1
        logger.debug(f"speculative answer discarded ({why})")
