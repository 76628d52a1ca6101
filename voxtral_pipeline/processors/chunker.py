"""Word chunker: one token stream in, two outputs: display words and speech chunks.

- **Display text**: every word goes on as a :class:`~voxtral_pipeline.frames.DisplayTextFrame` the
  moment it is complete (the next token shows where it ends), for transcripts and clients. The TTS
  stage passes these on at once without speaking them.
- **Speech chunks** (``AggregatedTextFrame``) for Kokoro, cut by the configured policy. The default,
  ``adaptive``: the first chunk goes out at ``first_chunk_words`` words, at a clause mark, or
  ``first_chunk_timeout_ms`` after the last token, whichever comes first, so the first sound is not
  held back by aggregation; later chunks end at clause and sentence marks, and the more audio is
  already queued ahead of the listener, the more clause marks a chunk may skip (Kokoro phrases
  whole sentences better) while its synthesis still finishes before the queue runs dry.

Chunks are cut only at whitespace, so a number, a decimal, a currency amount, an email, a URL or a
word is never split; abbreviations ("Dr.", "e.g.", "U.S.", "Sra.", "Mme") do not end a sentence, and
no chunk ends on a title or an initial ("Dr." | "Smith") or between the groups of a spaced number.

The rules hold for the session languages (docs/languages.md): a no-break space (U+00A0, U+202F,
U+2007, as French typography puts before ``! ? ; :`` and inside ``« »`` and ``12 000``) never
breaks a word; a chunk never starts with punctuation that belongs to the word before it (French
``Bonjour !`` with a plain space, ``»``, ``%``) nor ends on an opening mark (``«``, ``¿``, ``¡``);
closing quotes after a sentence end (``fin. »``) still end the sentence; the Hindi danda (``।``,
``॥``) ends a sentence; comma decimals (``3,5``) are single words like any number.

The queued audio is estimated from the words already sent (``words_per_second``) and the time
since the first chunk. How fast the TTS synthesizes comes from the TTS stage itself: Kokoro sends a
``SynthesisSpeedFrame`` (its measured real-time factor) upstream at start and after every chunk.
A chunk's budget is what can be synthesized before the queued speech runs out (queued seconds x
``words_per_second`` / real-time factor x ``growth``): on a GPU that is whole sentences; on a
slow CPU a chunk is cut at a word once it holds its budget, so playback does not stall waiting
for a punctuation mark. Without that feedback (another TTS) synthesis is assumed to be real-time
and only clause marks are used.

pipecat's own ``SimpleTextAggregator`` waits for whole sentences (its docs put the cost at
200-300 ms per sentence): that is the ``sentence`` policy's latency, and the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from pipecat.frames.frames import (
    AggregatedTextFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

from voxtral_pipeline.config import ChunkerConfig
from voxtral_pipeline.frames import DisplayTextFrame, SynthesisSpeedFrame

# No-break spaces (French typography, digit groups): they join, never separate, words.
_NO_BREAK = "\u00a0\u202f\u2007"
# A complete word: characters up to breaking whitespace, followed by it (the last word of the
# buffer is incomplete until the next token shows where it ends).
_COMPLETE_WORD = re.compile(rf"(?:[^\s]|[{_NO_BREAK}])+[^\S{_NO_BREAK}]+")
_CLOSERS = "\"'”’)\]»›"
_SENTENCE_END = re.compile(rf"[.!?…।॥]+[{re.escape(_CLOSERS)}]*$")
_CLAUSE_END = re.compile(rf"[,;:—–]+[{re.escape(_CLOSERS)}]*$")
# A "word" that is only punctuation belonging to the word before it ("Bonjour !", "fin »", "5 %").
_ATTACHED = re.compile(rf"[.,;:!?…।॥%‰{re.escape(_CLOSERS)}]+")
# A "word" that is only an opening mark, belonging to the word after it ("« Bonjour", "¿ Qué").
_OPENING = re.compile(r"[«‹“‘¿¡(\[]+")
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. sr. jr. st. vs. e.g. i.e. etc. approx. no. inc. ltd. co. mt. ft. jan. feb. "
    "mar. apr. jun. jul. aug. sep. sept. oct. nov. dec. a.m. p.m. u.s. u.k. fig. vol. dept. "
    # Spanish, French, Italian, Portuguese
    "sra. srta. sres. dña. ud. uds. dra. pág. núm. av. mme. mlle. mm. p.ex. sig. dott. ing. avv. pag. "
    "n.º nº.".split()
)
# Words that must not end a chunk when another word follows: the next word completes them.
_TITLES = frozenset(
    "mr. mrs. ms. dr. prof. st. mt. ft. no. vs. fig. vol. sr. sra. srta. sres. dña. dra. ud. mme. mlle. "
    "sig. dott. ing. avv. mm. mme mlle".split()
)
_INITIAL = re.compile(r"(?:[^\W\d_]\.)+")
_DIGIT_GROUP = re.compile(r"\d{1,3}")
_THOUSANDS = re.compile(r"\d{3}(?:[.,]\d+)?[.,;:!?]?")
# Speech left in the queue below which a stalled later chunk is flushed by the timeout.
STALL_MARGIN_S = 0.3
# Real-time factors are floored here (a GPU reports ~0.01-0.05; nothing is infinitely fast).
MIN_RTF = 0.01


def _is_abbreviation(word: str) -> bool:
    w = word.lower().strip("\"'”’()[]")
    return w in _ABBREVIATIONS or bool(_INITIAL.fullmatch(w))


def boundary(text: str) -> str | None:
    """``"sentence"``, ``"clause"`` or None for the punctuation a word or chunk ends with.

    Closing quotes set apart by a space (``fin. »``) belong to what they close.
    """
    words = text.split()
    while len(words) > 1 and all(ch in _CLOSERS for ch in words[-1]):
        words.pop()
    word = words[-1] if words else ""
    if not word:
        return None
    if _SENTENCE_END.search(word) and not _is_abbreviation(word):
        return "sentence"
    if _CLAUSE_END.search(word):
        return "clause"
    return None


def _joined(word: str, next_word: str | None, next_complete: bool = True) -> bool:
    """Whether a cut between ``word`` and ``next_word`` would split what is read as one unit.

    ``next_word`` None: nothing follows yet; ``next_complete`` False: it is still arriving.
    """
    if word.lower() in _TITLES or (_INITIAL.fullmatch(word) and len(word) <= 2):
        return True  # "Dr." | "Smith", "J." | "Smith": held even before the next word is known
    if _OPENING.fullmatch(word):
        return True  # "«" | "Bonjour", "¿" | "Qué"
    if next_word is not None and _ATTACHED.fullmatch(next_word):
        return True  # "Bonjour" | "!", "fin." | "»", "5" | "%"
    if not _DIGIT_GROUP.fullmatch(word.lstrip("$€£(")):
        return False
    # "12 000", "1 234 567": a number written with spaces between its digit groups; a short
    # number at the end of the text so far waits for the next word to say which it is.
    if next_word is None:
        return True
    if next_complete:
        return bool(_THOUSANDS.fullmatch(next_word))
    return bool(re.fullmatch(r"\d{1,3}", next_word))


class WordStream:
    """Complete words of a token stream, each with the whitespace after it, as soon as known."""

    def __init__(self):
        self._buffer = ""

    def reset(self) -> None:
        self._buffer = ""

    def push(self, text: str) -> list[str]:
        self._buffer += text
        end = 0
        words = []
        for match in _COMPLETE_WORD.finditer(self._buffer):
            # Leading whitespace of the buffer goes with the first word, so words rejoin exactly.
            words.append(self._buffer[end : match.end()])
            end = match.end()
        self._buffer = self._buffer[end:]
        return words

    def flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest


class ChunkSplitter:
    """Pure chunking logic, separate from pipecat so it can be tested on any text and any timing.

    The chunks returned by :meth:`push`, :meth:`timeout` and :meth:`flush` always join back to the
    exact text pushed (whitespace included). ``clock`` (seconds) is only read to estimate how much
    speech is still queued ahead of the listener.
    """

    def __init__(self, config: ChunkerConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self._config = config or ChunkerConfig()
        self._clock = clock
        self._rtf: float | None = None
        self.reset()

    @property
    def config(self) -> ChunkerConfig:
        return self._config

    def reset(self) -> None:
        """Forget pending text; the next chunk is a first chunk again."""
        self._buffer = ""
        self._chunks_out = 0
        self._words_out = 0
        self._first_out_at: float | None = None
        self._first_words = 0
        self._synth_free_at: float | None = None

    @property
    def rtf(self) -> float | None:
        """The TTS's real-time factor as last reported (None: never reported, assumed 1)."""
        return self._rtf

    def set_rtf(self, rtf: float) -> None:
        """Feedback from the TTS: seconds of synthesis per second of speech (smoothed).

        Kept across responses: it describes the TTS, not the reply.
        """
        if rtf > 0 and rtf == rtf:  # positive and not NaN
            old = self.rtf
            self._rtf = rtf if old is None else 0.5 * old + 0.5 * rtf

    def budget_words(self) -> float:
        """Words the next chunk may hold so its synthesis ends before the queued speech does.

        With the TTS's real-time factor known, the TTS is modelled as one worker that synthesizes
        the chunks in order: the next chunk starts once the chunks already sent are done, and must
        be done before the speech queued ahead of the listener runs out. Without feedback (another
        TTS) synthesis is taken as real-time and the budget is the queued speech itself.
        Both are scaled by ``growth``.
        """
        c = self._config
        queued = self.queued_speech_s()
        if self._rtf is None:
            return c.growth * queued * c.words_per_second
        now = self._clock()
        rtf = max(self._rtf, MIN_RTF)
        free_at = max(self._synth_free_at or now, now)
        return max(0.0, c.growth * (now + queued - free_at) * c.words_per_second / rtf)

    @property
    def pending(self) -> str:
        return self._buffer

    @property
    def chunks_out(self) -> int:
        return self._chunks_out

    def queued_speech_s(self) -> float:
        """Estimated seconds of speech already sent as chunks and not yet played.

        Playback starts once the first chunk is synthesized (its length times the reported
        real-time factor after it was sent), then plays in real time.
        """
        if self._first_out_at is None:
            return 0.0
        wps = self._config.words_per_second
        play_start = self._first_out_at + (self._rtf or 0.0) * self._first_words / wps
        return max(0.0, self._words_out / wps - max(0.0, self._clock() - play_start))

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the chunks that are ready to speak."""
        self._buffer += text
        chunks = []
        while (cut := self._next_cut()) is not None:
            chunks.append(self._emit(cut))
        return chunks

    def timeout_delay(self) -> float | None:
        """Seconds after the last token at which :meth:`timeout` would release a chunk, or None."""
        if self._last_safe_cut() is None:
            return None
        first_timeout = self._config.first_chunk_timeout_ms / 1000.0
        if self._chunks_out == 0:
            return first_timeout if first_timeout > 0 else None
        if self._config.policy != "adaptive":
            return None
        # A later chunk waits for its boundary while there is audio to play; a stalled stream
        # is flushed just before the queue runs dry.
        return max(first_timeout, self.queued_speech_s() - STALL_MARGIN_S)

    def timeout(self) -> list[str]:
        """No token came for :meth:`timeout_delay`: release the complete words that may go."""
        if self._chunks_out > 0 and (
            self._config.policy != "adaptive" or self.queued_speech_s() > STALL_MARGIN_S + 0.005
        ):
            return []
        cut = self._last_safe_cut()
        return [self._emit(cut)] if cut is not None else []

    def flush(self) -> str | None:
        """Return whatever is left (end of the response)."""
        rest, self._buffer = self._buffer, ""
        if rest.strip():
            self._count(rest)
            return rest
        return rest or None

    def _emit(self, cut: int) -> str:
        chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self._count(chunk)
        return chunk

    def _count(self, chunk: str) -> None:
        now, words = self._clock(), len(chunk.split())
        if self._first_out_at is None:
            self._first_out_at = now
            self._first_words = words
        self._chunks_out += 1
        self._words_out += words
        # The TTS works through the chunks in order: when will it be done with this one?
        start = max(self._synth_free_at or now, now)
        self._synth_free_at = start + (self._rtf or 0.0) * words / self._config.words_per_second

    def _words(self) -> list[tuple[str, int, bool, str | None]]:
        """Complete words of the buffer: (word, end offset, whether a cut after it splits a unit,
        the next word as far as it is known)."""
        matches = list(_COMPLETE_WORD.finditer(self._buffer))
        out = []
        for i, m in enumerate(matches):
            if i + 1 < len(matches):
                nxt: str | None = matches[i + 1].group().strip()
                joined = _joined(m.group().strip(), nxt)
            else:
                # A word still arriving at the end of the buffer is known to follow.
                nxt = self._buffer[m.end() :].strip() or None
                joined = _joined(m.group().strip(), nxt, next_complete=False)
            out.append((m.group().strip(), m.end(), joined, nxt))
        return out

    def _last_safe_cut(self) -> int | None:
        """The end of the last complete word after which a cut splits nothing."""
        for _word, end, joined, _next in reversed(self._words()):
            if not joined:
                return end
        return None

    def _next_cut(self) -> int | None:
        c = self._config
        first = self._chunks_out == 0
        budget = None
        passed_mark = None
        for n, (word, end, joined, nxt) in enumerate(self._words(), start=1):
            if joined:
                continue
            b = boundary(word)
            if c.policy == "words":
                if n >= (c.first_chunk_words if first else c.min_words):
                    return end
                continue
            if n >= c.max_words:
                return end
            if c.policy == "sentence":
                if b == "sentence":
                    return end
                continue
            if first:
                if b or (c.policy == "adaptive" and n >= c.first_chunk_words):
                    return end
                continue
            if b == "sentence":
                return end
            if c.policy == "clause":
                if b == "clause" and n >= c.min_words:
                    return end
                continue
            if budget is None:
                budget = self.budget_words()
            if b == "clause" and n >= c.min_words and n >= budget / 2:
                return end
            if b == "clause":
                passed_mark = end  # passed for a longer chunk; the fallback if the budget runs out
            # A measured slow TTS (CPU): once the chunk is as long as its synthesis can afford, cut
            # it, at the clause mark it passed if any, else at this word, rather than let the queue
            # run dry (a gap) waiting for a mark (unless the next word already shows one:
            # "help with" | "that." reads badly).
            if self.rtf is not None and n >= max(c.first_chunk_words, budget) and not boundary(nxt or ""):
                return passed_mark or end
        return None


class WordChunker(FrameProcessor):
    """Turn ``LLMTextFrame`` tokens into display words and ``AggregatedTextFrame`` speech chunks.

    Tokens are consumed here. Each complete word goes on at once as a ``DisplayTextFrame``; each
    speech chunk as one ``AggregatedTextFrame``, which pipecat's ``TTSService`` speaks as it is (no
    further aggregation). The end of a response flushes what is left; an interruption drops it
    and cancels the pending timeout.
    """

    def __init__(self, config: ChunkerConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self._splitter = ChunkSplitter(config)
        self._words = WordStream()
        self._timer: asyncio.Task | None = None

    @property
    def splitter(self) -> ChunkSplitter:
        return self._splitter

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, LLMFullResponseStartFrame):
            await self._cancel_timer()
            self._reset()
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            await self._cancel_timer()
            for word in self._words.push(frame.text):
                await self.push_frame(DisplayTextFrame(word))
            for chunk in self._splitter.push(frame.text):
                await self._push_chunk(chunk)
            self._arm_timer()
        elif isinstance(frame, (LLMFullResponseEndFrame, EndFrame)):
            await self._cancel_timer()
            rest_words = self._words.flush()
            if rest_words:
                await self.push_frame(DisplayTextFrame(rest_words))
            rest = self._splitter.flush()
            if rest and rest.strip():
                await self._push_chunk(rest)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._cancel_timer()
            self._reset()
            await self.push_frame(frame, direction)
        elif isinstance(frame, SynthesisSpeedFrame):
            self._splitter.set_rtf(frame.rtf)  # feedback for this stage only: not passed on
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self):
        await self._cancel_timer()
        await super().cleanup()

    def _reset(self) -> None:
        self._splitter.reset()
        self._words.reset()

    def _arm_timer(self) -> None:
        delay = self._splitter.timeout_delay()
        if delay is not None:
            self._timer = self.create_task(self._on_timeout(delay), name=f"{self}::timeout")

    async def _on_timeout(self, delay: float):
        await asyncio.sleep(delay)
        for chunk in self._splitter.timeout():
            await self._push_chunk(chunk)
        # A stalled later chunk may still be waiting for the queue to run low.
        self._arm_timer()

    async def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            await self.cancel_task(timer)

    async def _push_chunk(self, text: str):
        await self.push_frame(AggregatedTextFrame(text, TextType.SENTENCE))
