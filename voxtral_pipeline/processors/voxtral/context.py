"""A session's conversation for Voxtral: pipecat's ``LLMContext`` plus the audio memory beside it.

The conversation *is* an ``LLMContext`` (shared with pipecat's aggregators when the pipeline has
them): user turns are ``input_audio`` messages, assistant turns text (what the listener heard,
after an interruption; see docs/turns.md) and function calls, tool turns the results. Beside it
the stage keeps, per spoken turn, its samples, duration and idle-time transcript. The last
``audio_turns`` earlier user turns are rendered as audio; older ones as their transcript once one
exists, else as a placeholder with their duration, and once past the budget their message in the
context is replaced by that text (a long session's memory stays flat). Instructions go in the
first user turn (:mod:`.adapter`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
from loguru import logger
from pipecat.processors.aggregators.llm_context import LLMContext

from voxtral_pipeline.audio import pcm16_to_float, resample
from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models.voxtral import SAMPLE_RATE, audio_content_part
from voxtral_pipeline.processors.voxtral.adapter import (
    VoxtralLLMAdapter,
    VoxtralRequest,
    audio_data,
    message_text,
)

CHUNK_SECS = 30.0


@dataclass(eq=False)
class UserAudio:
    """What the stage keeps of one spoken user turn beside its message."""

    samples: np.ndarray | None  # None once released (the turn is text from then on)
    secs: float
    transcript: str | None = None
    cut: dict[str, Any] | None = None  # the message as heard, when its audio was too long


class ContextTurn:
    """A view of one message of the context, with the audio memory of a spoken user turn.

    Setting :attr:`text` edits the message in the context (an answer cut at an interruption).
    """

    def __init__(self, message: dict[str, Any], audio: UserAudio | None):
        self.message = message
        self.memory = audio

    @property
    def role(self) -> str:
        return self.message.get("role", "")

    @property
    def text(self) -> str:
        return message_text(self.message.get("content"))

    @text.setter
    def text(self, value: str) -> None:
        self.message["content"] = value

    @property
    def audio(self) -> np.ndarray | None:
        return None if self.memory is None else self.memory.samples

    @property
    def transcript(self) -> str | None:
        return None if self.memory is None else self.memory.transcript

    @transcript.setter
    def transcript(self, value: str | None) -> None:
        assert self.memory is not None, "only a spoken turn has a transcript"
        self.memory.transcript = value

    @property
    def duration_secs(self) -> float:
        return 0.0 if self.memory is None else self.memory.secs

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        return self.message.get("tool_calls")

    @property
    def tool_call_id(self) -> str | None:
        return self.message.get("tool_call_id")

    def __repr__(self) -> str:
        return f"ContextTurn({self.role}, {self.text[:40]!r}, {self.duration_secs:.1f} s)"


def placeholder(turn: ContextTurn) -> str:
    """What stands for an old user turn past the audio budget before its transcript exists."""
    return f"[earlier spoken turn, {turn.duration_secs:.1f} s, not transcribed yet]"


class VoxtralContext:
    """The conversation of one session (an ``LLMContext``), rendered for the model under an audio budget."""

    def __init__(
        self,
        instructions: str | None | Callable[[], str | None],
        audio_turns: int,
        max_user_turns: int | None = None,
        llm_context: LLMContext | None = None,
        max_audio_secs: float | None = None,
    ):
        self._instructions = instructions
        self.max_audio_secs = max_audio_secs
        self.audio_turns = audio_turns
        self.max_user_turns = max_user_turns
        self.llm_context = llm_context if llm_context is not None else LLMContext()
        self.dropped_user_turns = 0
        self.adapter = VoxtralLLMAdapter()
        # Per spoken turn: its message (kept alive, so its id stays unique) and its memory.
        self._audio: dict[int, tuple[dict[str, Any], UserAudio]] = {}

    @property
    def instructions(self) -> str | None:
        return self._instructions() if callable(self._instructions) else self._instructions

    def use(self, llm_context: LLMContext) -> None:
        """Continue on another context (the one an ``LLMContextFrame`` brings)."""
        self.llm_context = llm_context

    # -----------------------------------------------------------------------------------------
    # Turns

    def _memory(self, message: dict[str, Any]) -> UserAudio | None:
        kept = self._audio.get(id(message))
        if kept is not None and kept[0] is message:
            return kept[1]
        data = audio_data(message)
        if message.get("role") != "user" or not data:
            return None
        # The same audio in a copied message keeps its memory; audio from elsewhere is decoded.
        memory = next((mem for kept, mem in self._audio.values() if audio_data(kept)[:1] == data[:1]), None)
        if memory is None:
            samples = np.concatenate([decode_wav(d) for d in data])
            memory = UserAudio(samples, len(samples) / SAMPLE_RATE)
        self._audio[id(message)] = (message, memory)
        return memory

    @property
    def turns(self) -> list[ContextTurn]:
        return [
            ContextTurn(m, self._memory(m)) for m in self.llm_context.get_messages() if isinstance(m, dict)
        ]

    @property
    def user_turns(self) -> list[ContextTurn]:
        return [t for t in self.turns if t.role == "user"]

    def add_user(self, audio: np.ndarray) -> ContextTurn:
        """A spoken turn: an ``input_audio`` (base64 WAV) message, as ``create_audio_message`` makes it."""
        data = audio_content_part(audio, SAMPLE_RATE)["base64"]
        message = {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
        }
        memory = UserAudio(audio, len(audio) / SAMPLE_RATE)
        self._audio[id(message)] = (message, memory)
        self.llm_context.add_message(message)  # type: ignore[arg-type]
        self._trim()
        return ContextTurn(message, memory)

    def remove(self, turn: ContextTurn) -> None:
        """Take a turn out (a withdrawn speculative turn)."""
        self.llm_context.set_messages([m for m in self.llm_context.get_messages() if m is not turn.message])
        self._audio.pop(id(turn.message), None)

    def _trim(self) -> None:
        """Past ``max_user_turns``, drop the oldest exchanges down to three quarters of it.

        An exchange (a user turn with its answers, calls and results) goes whole, so every call
        keeps its result and the conversation still opens with a user turn. Dropping a block at
        once, rather than one turn per turn, changes the prompt's prefix (and so costs a full
        prefill) only once per quarter of the window. A withdrawn speculative turn leaves the same
        window as a session without speculation: the trim keeps the newest turns either way.
        System messages stay.
        """
        if self.max_user_turns is None:
            return
        messages = self.llm_context.get_messages()
        starts = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
        if len(starts) <= self.max_user_turns:
            return
        keep = max(1, self.max_user_turns * 3 // 4)
        dropped = len(starts) - keep
        cut = starts[dropped]
        gone = messages[:cut]
        kept = [m for m in gone if isinstance(m, dict) and m.get("role") == "system"] + messages[cut:]
        self.llm_context.set_messages(kept)
        for m in gone:
            self._audio.pop(id(m), None)
        self.dropped_user_turns += dropped
        logger.info(
            f"conversation reached voxtral.max_history_turns={self.max_user_turns}: dropped its oldest "
            f"{dropped} exchange(s) ({self.dropped_user_turns} so far)"
        )

    def add_assistant(self, text: str) -> ContextTurn:
        message = {"role": "assistant", "content": text}
        self.llm_context.add_message(message)  # type: ignore[arg-type]
        return ContextTurn(message, None)

    # -----------------------------------------------------------------------------------------
    # Rendering under the audio budget

    def audio_limit(self, upcoming: int = 0) -> int:
        """Index (among user turns) below which turns are past the audio budget.

        ``upcoming`` user turns not yet in the context are counted as if they were (a refresh
        prepares the context the next turn will see).
        """
        n = len(self.user_turns) + upcoming
        # The newest user turn is always audio, plus ``audio_turns`` earlier ones.
        return max(0, n - 1 - self.audio_turns)

    def request(self, upcoming: int = 0, max_audios: int | None = None) -> VoxtralRequest:
        """The chat request (and what was left out of it) for the model.

        ``max_audios`` additionally caps the audio parts (vLLM takes at most 5 per prompt).
        """
        users = self.user_turns
        limit = self.audio_limit(upcoming)
        if max_audios is not None:
            limit = max(limit, len(users) + upcoming - max_audios)
        text_for = {
            id(t.message): t.transcript or placeholder(t) for t in users[:limit] if audio_data(t.message)
        }
        source: list[Any] = []
        dropped: list[str] = []
        for i, m in enumerate(self.llm_context.get_messages()):
            audible = isinstance(m, dict) and id(m) not in text_for and bool(audio_data(m))
            memory = self._memory(m) if audible else None
            if memory is not None and self.max_audio_secs and memory.secs > self.max_audio_secs:
                m = self._cut(m, memory)
                cut = memory.secs - self.max_audio_secs
                dropped.append(
                    f"the first {cut:.1f} s of the {memory.secs:.1f} s of audio in message {i} "
                    f"(over voxtral.max_utterance_secs={self.max_audio_secs:g})"
                )
            source.append(m)
        request = self.adapter.voxtral_request(
            self.llm_context,
            instructions=self.instructions,
            as_text=lambda m: text_for.get(id(m)),
            messages=source,
        )
        request.dropped[:0] = dropped
        return request

    def _cut(self, message: dict[str, Any], memory: UserAudio) -> dict[str, Any]:
        """The message with only the last ``max_audio_secs`` of its audio (made once)."""
        if memory.cut is None:
            assert self.max_audio_secs is not None and memory.samples is not None
            keep = memory.samples[-int(self.max_audio_secs * SAMPLE_RATE) :]
            data = audio_content_part(keep, SAMPLE_RATE)["base64"]
            others = [
                p for p in message["content"] if not (isinstance(p, dict) and p.get("type") == "input_audio")
            ]
            audio = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
            memory.cut = {**message, "content": [audio, *others]}
        return memory.cut

    def render(self, upcoming: int = 0, max_audios: int | None = None) -> list[dict[str, Any]]:
        """Chat messages for the model (instructions in the first user turn)."""
        return self.request(upcoming, max_audios).messages

    def release_old_audio(self, transcribing: bool) -> int:
        """Replace user turns past the audio budget by their text: they are never heard as audio again.

        From then on they are text (the budget only moves forward) in the context itself: their
        transcript, or, when ``transcribing`` is off, the placeholder (which keeps their duration,
        so the rendered prompt and its KV cache do not change). A turn still waiting for its
        transcript keeps its audio. This keeps a long session's memory flat. Returns how many
        turns were freed.

        It stays one turn behind the budget: the newest user turn may be a speculative one that
        is withdrawn, which moves the budget back by one.
        """
        freed = 0
        for turn in self.user_turns[: self.audio_limit(upcoming=-1)]:
            memory = turn.memory
            if memory is None or memory.samples is None:
                continue
            if memory.transcript is not None or not transcribing:
                turn.message["content"] = [{"type": "text", "text": memory.transcript or placeholder(turn)}]
                memory.samples = None
                freed += 1
        return freed

    def needs_transcript(self) -> list[ContextTurn]:
        """Spoken user turns with no transcript yet, oldest first (the ones to fall out of budget first)."""
        return [t for t in self.user_turns if t.audio is not None and t.transcript is None]


def decode_wav(data: str) -> np.ndarray:
    """A base64 audio file (an ``input_audio`` part) as mono float32 at 16 kHz."""
    samples, rate = sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32", always_2d=True)
    return resample(samples.mean(axis=1), rate, SAMPLE_RATE)


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
