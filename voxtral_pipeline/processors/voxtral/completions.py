"""Which context frames still need a completion (as pipecat's NvidiaOmni tracks them).

Pipecat's aggregators send the context again for what is already answered: a spoken turn the
stage wrote itself, an answer the assistant aggregator recorded, a call whose result is still
``IN_PROGRESS``. And a transcript the stage pushed upstream comes back from the user aggregator as
a user message repeating a spoken turn already in the context. Neither starts a completion.
"""

from __future__ import annotations

from pipecat.processors.aggregators.llm_context import LLMContext

from voxtral_pipeline.processors.voxtral.tool_round import IN_PROGRESS

ECHOES_KEPT = 16


class CompletionTracker:
    """What the last completion saw, and the transcripts sent upstream."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._echoes: list[str] = []

    def seen(self, context: LLMContext) -> None:
        """A completion starts on this context: everything in it is being answered."""
        self._seen = {id(m) for m in context.get_messages()}

    def forget(self) -> None:
        """Another context (a new ``LLMContextFrame``): nothing of it was answered here."""
        self._seen = set()

    def echo(self, transcript: str) -> None:
        """A transcript was sent upstream; a user aggregator may write it back."""
        self._echoes.append(transcript)
        del self._echoes[:-ECHOES_KEPT]

    def needs_answer(self, context: LLMContext) -> bool:
        """A user, developer or tool message after the last answer that no completion has seen."""
        for m in reversed(context.get_messages()):
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            if role == "assistant":
                return False
            if role == "tool" and m.get("content") == IN_PROGRESS:
                return False  # a call still running: its result will ask again
            if role in ("user", "developer", "tool") and id(m) not in self._seen:
                return True
        return False

    def drop_echoes(self, context: LLMContext) -> None:
        """Remove user messages that only repeat a transcript of a spoken turn already there."""
        if not self._echoes:
            return
        messages = context.get_messages()
        kept = []
        for m in messages:
            text = m.get("content") if isinstance(m, dict) and m.get("role") == "user" else None
            if isinstance(text, str) and text.strip() in self._echoes:
                self._echoes.remove(text.strip())
                continue
            kept.append(m)
        if len(kept) != len(messages):
            context.set_messages(kept)
