"""Idle-time work of a session: transcripts of its user turns, then a refresh of its KV cache.

While nobody waits for an answer, the session's spoken turns are transcribed (oldest first: they
fall out of the audio budget first) and, in pipecat's pipeline, each transcript goes upstream as
a ``TranscriptionFrame`` for the user aggregator and RTVI clients. When the next turn's prompt
will differ from the cached one before its new audio (a turn leaves the audio budget, a
transcript replaces a placeholder, tools move), that context is prefilled now. A new turn cancels
all of it at once: the engine stops within a decode step and the work starts over after the answer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from loguru import logger
from pipecat.frames.frames import TranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.time import time_now_iso8601

if TYPE_CHECKING:
    from voxtral_pipeline.processors.voxtral.processor import VoxtralLLMService


def transcript_max_tokens(secs: float) -> int:
    """A transcript's token limit, on either backend: 8 tokens a second of audio, plus 16.

    Without a bound a random or confused model's transcript runs to the context limit.
    """
    return max(16, int(secs * 8) + 16)


class IdleWork:
    """The idle-time work of one stage (at most one run at a time)."""

    def __init__(self, service: VoxtralLLMService):
        self._service = service
        self._task: asyncio.Task | None = None
        self._cancel: threading.Event | None = None

    def start(self) -> None:
        s = self._service
        transcripts = s.config.transcribe_history and bool(s.context.needs_transcript())
        if not (transcripts or self._refresh_due()):
            return
        if self._task is not None and not self._task.done():
            return
        self._task = s.create_task(self._run(), "voxtral-idle-work")

    async def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            await self._service.cancel_task(task)

    async def _report(self, text: str) -> None:
        """The transcript, upstream as a ``TranscriptionFrame``: pipecat's user aggregator writes it
        into the context (the echo is removed there, see :mod:`.completions`), and RTVI's observer
        sends it to the client as ``user-transcription``. Behind the project's turn stage it goes
        upstream too (the stage's strategies start turns on the VAD only, so it starts no turn); it
        is never pushed downstream, where the TTS would speak it.
        """
        self._service.completions.echo(text)
        frame = TranscriptionFrame(text=text, user_id="", timestamp=time_now_iso8601(), result=text)
        await self._service.push_frame(frame, FrameDirection.UPSTREAM)

    def _refresh_due(self) -> bool:
        """The next turn's prompt prefix will change: a turn leaves the audio budget, or tools move."""
        s = self._service
        ctx = s.context
        # Tools are rendered before the *last* user turn (Mistral tokenizers before v13), so with
        # tools the next prompt always differs from the cached one there.
        return s.backend.keeps_cache and (
            ctx.audio_limit(upcoming=1) > ctx.audio_limit() or bool(s.offered_tools())
        )

    async def _run(self) -> None:
        s = self._service
        cancel = self._cancel = threading.Event()
        c = s.config
        changed = self._refresh_due()
        limit = s.context.audio_limit(upcoming=1)
        users = s.context.user_turns
        for turn in s.context.needs_transcript() if c.transcribe_history else []:
            if cancel.is_set() or turn.audio is None:
                return
            try:
                text = await s.backend.transcribe(
                    turn.audio, c.transcription_language, cancel, transcript_max_tokens(turn.duration_secs)
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning(f"{s}: transcript failed: {type(e).__name__}: {e}")
                return
            if text is None:
                return  # a new turn took the engine; tried again after its answer
            turn.transcript = text
            changed = changed or any(t.message is turn.message for t in users[:limit])
            if text:
                await self._report(text)
        if changed and not cancel.is_set():
            # The next turn will see these transcripts: prefill that context now, while idle.
            try:
                done = await s.backend.refresh(
                    s.session_id, s.context.render(upcoming=1), s.offered_tools(), cancel
                )
            except Exception as e:  # only a head start was lost: the next turn prefills instead
                logger.warning(f"{s}: cache refresh failed: {type(e).__name__}: {e}")
                return
            if done is not None:
                s.bill_ahead(done)
