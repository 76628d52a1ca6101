"""A session's conversation for Voxtral: what each turn holds and how it is rendered.

User turns are kept as 16 kHz float audio (encoded to a chat-template part once). The last
``audio_turns`` earlier user turns are rendered as audio; older ones as their transcript once
one exists, else as a short placeholder with their duration. Assistant turns hold the text that
was sent downstream, replaced at an interruption by what the listener actually heard (see
docs/turns.md), and the function calls the model made;
tool turns hold each call's result, so later turns (and the KV cache) see what was called and
what came back. Instructions go in the first user turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from loguru import logger

from voxtral_pipeline.audio import pcm16_to_float, resample
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models.voxtral import (
    SAMPLE_RATE,
    ConversationTurn,
    audio_content_part,
    build_conversation,
)
from voxtral_pipeline.processors.voxtral.tools import ToolCall, ToolResult

CHUNK_SECS = 30.0


@dataclass(eq=False)  # turns are compared by identity (their audio is an array)
class ContextTurn:
    """One turn of a session.

    Parameters:
        role: ``user``, ``assistant`` or ``tool``.
        audio: A user turn's samples (float32, 16 kHz).
        text: An assistant turn's text (as heard, after an interruption), or a tool turn's result.
        transcript: A user turn's transcript, once the idle engine has made one.
        tool_calls: An assistant turn's function calls (OpenAI chat format).
        tool_call_id: A tool turn's call id.
        name: A tool turn's function name.
    """

    role: Literal["user", "assistant", "tool"]
    audio: np.ndarray | None = None
    text: str = ""
    transcript: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    _part: dict[str, Any] | None = field(default=None, repr=False)
    _secs: float | None = field(default=None, repr=False)  # kept when the audio is released

    @property
    def duration_secs(self) -> float:
        if self.audio is None:
            return self._secs or 0.0
        return len(self.audio) / SAMPLE_RATE

    @property
    def audio_part(self) -> dict[str, Any]:
        if self._part is None:
            assert self.audio is not None
            self._part = audio_content_part(self.audio, SAMPLE_RATE)
        return self._part


def placeholder(turn: ContextTurn) -> str:
    """What stands for an old user turn past the audio budget before its transcript exists."""
    return f"[earlier spoken turn, {turn.duration_secs:.1f} s, not transcribed yet]"


class VoxtralContext:
    """The conversation of one session, rendered for the model under an audio budget."""

    def __init__(self, instructions: str | None, audio_turns: int, max_user_turns: int | None = None):
        self.instructions = instructions
        self.audio_turns = audio_turns
        self.max_user_turns = max_user_turns
        self.turns: list[ContextTurn] = []
        self.dropped_user_turns = 0

    def add_user(self, audio: np.ndarray) -> ContextTurn:
        turn = ContextTurn("user", audio=audio)
        self.turns.append(turn)
        self._trim()
        return turn

    def _trim(self) -> None:
        """Past ``max_user_turns``, drop the oldest exchanges down to three quarters of it.

        An exchange (a user turn with its answers, calls and results) goes whole, so every call
        keeps its result and the conversation still opens with a user turn. Dropping a block at
        once, rather than one turn per turn, changes the prompt's prefix (and so costs a full
        prefill) only once per quarter of the window. A withdrawn speculative turn leaves the same
        window as a session without speculation: the trim keeps the newest turns either way.
        """
        if self.max_user_turns is None:
            return
        starts = [i for i, t in enumerate(self.turns) if t.role == "user"]
        if len(starts) <= self.max_user_turns:
            return
        keep = max(1, self.max_user_turns * 3 // 4)
        dropped = len(starts) - keep
        self.turns = self.turns[starts[dropped] :]
        self.dropped_user_turns += dropped
        logger.info(
            f"conversation reached voxtral.max_history_turns={self.max_user_turns}: dropped its oldest "
            f"{dropped} exchange(s) ({self.dropped_user_turns} so far)"
        )

    def add_assistant(self, text: str) -> ContextTurn:
        turn = ContextTurn("assistant", text=text)
        self.turns.append(turn)
        return turn

    def add_tool_calls(self, text: str, calls: list[ToolCall]) -> ContextTurn:
        """The model's calls, with what it said before them in the same answer."""
        turn = ContextTurn("assistant", text=text, tool_calls=[c.openai() for c in calls])
        self.turns.append(turn)
        return turn

    def add_tool_result(self, result: ToolResult) -> ContextTurn:
        turn = ContextTurn("tool", text=result.content(), tool_call_id=result.call.id, name=result.call.name)
        self.turns.append(turn)
        return turn

    @property
    def user_turns(self) -> list[ContextTurn]:
        return [t for t in self.turns if t.role == "user"]

    def audio_limit(self, upcoming: int = 0) -> int:
        """Index (among user turns) below which turns are past the audio budget.

        ``upcoming`` user turns not yet in the context are counted as if they were (a refresh
        prepares the context the next turn will see).
        """
        n = len(self.user_turns) + upcoming
        # The newest user turn is always audio, plus ``audio_turns`` earlier ones.
        return max(0, n - 1 - self.audio_turns)

    def render_turns(self, upcoming: int = 0, max_audios: int | None = None) -> list[ConversationTurn]:
        """Turns for :func:`build_conversation`: audio inside the budget, text beyond it.

        ``max_audios`` additionally caps the audio parts (vLLM takes at most 5 per prompt).
        """
        limit = self.audio_limit(upcoming)
        users = self.user_turns
        if max_audios is not None:
            limit = max(limit, len(users) + upcoming - max_audios)
        out: list[ConversationTurn] = []
        index = 0
        for turn in self.turns:
            if turn.role == "assistant":
                out.append(ConversationTurn("assistant", text=turn.text, tool_calls=turn.tool_calls))
                continue
            if turn.role == "tool":
                out.append(
                    ConversationTurn("tool", text=turn.text, tool_call_id=turn.tool_call_id, name=turn.name)
                )
                continue
            if index >= limit:
                out.append(ConversationTurn("user", audio=turn.audio_part))
            else:
                out.append(ConversationTurn("user", text=turn.transcript or placeholder(turn)))
            index += 1
        return out

    def render(self, upcoming: int = 0, max_audios: int | None = None) -> list[dict[str, Any]]:
        """Chat messages for the model (instructions in the first user turn)."""
        return build_conversation(self.render_turns(upcoming, max_audios), self.instructions)

    def release_old_audio(self, transcribing: bool) -> int:
        """Free the samples of user turns past the audio budget: they are never heard as audio again.

        From then on they are text (the budget only moves forward): their transcript, or, when
        ``transcribing`` is off, the placeholder (which keeps their duration, so the rendered
        prompt and its KV cache do not change). A turn still waiting for its transcript keeps its
        audio. This keeps a long session's memory flat. Returns how many turns were freed.

        It stays one turn behind the budget: the newest user turn may be a speculative one that
        is withdrawn, which moves the budget back by one.
        """
        freed = 0
        for turn in self.user_turns[: self.audio_limit(upcoming=-1)]:
            if turn.audio is not None and (turn.transcript is not None or not transcribing):
                turn._secs = turn.duration_secs
                turn.audio = None
                turn._part = None
                freed += 1
        return freed

    def needs_transcript(self) -> list[ContextTurn]:
        """User turns with no transcript yet, oldest first (the ones to fall out of budget first)."""
        return [t for t in self.user_turns if t.transcript is None]


def utterance_samples(frame: UserUtteranceFrame) -> np.ndarray:
    """The utterance as mono float32 at 16 kHz."""
    samples = pcm16_to_float(frame.audio)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
    return resample(np.asarray(samples, dtype=np.float32), frame.sample_rate, SAMPLE_RATE)


def check_utterance(
    samples: np.ndarray, *, min_secs: float, silence_dbfs: float, max_secs: float
) -> tuple[np.ndarray | None, str | None]:
    """Drop sub-``min_secs`` or silence-only turns; cap long ones to their last ``max_secs``.

    Returns ``(samples, None)`` to keep (possibly cut) or ``(None, reason)`` to drop without an
    inference. Utterances over 30 s are several audio chunks of 375 tokens each.
    """
    secs = len(samples) / SAMPLE_RATE
    if secs < min_secs:
        return None, f"shorter than {min_secs * 1000:.0f} ms"
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak <= 10 ** (silence_dbfs / 20):
        return None, f"silent (peak below {silence_dbfs:.0f} dBFS)"
    if secs > max_secs:
        keep = int(max_secs * SAMPLE_RATE)
        logger.warning(
            f"utterance of {secs:.1f} s is longer than voxtral.max_utterance_secs={max_secs:.0f}; "
            f"keeping its last {max_secs:.0f} s"
        )
        samples = samples[-keep:]
    return samples, None
