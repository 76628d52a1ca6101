"""Word chunker: turns Voxtral's token stream into speech chunks for Kokoro.

The first chunk goes out as soon as its first words are complete (one word by default), so the
first audible sound is not held back by text aggregation; later chunks end at clause or sentence
marks, which gives Kokoro enough context for natural prosody. Chunks are cut only at whitespace,
so a number, a currency amount, an email, a URL or a word is never split; abbreviations such as
"Dr." do not count as sentence ends.

pipecat's own ``SimpleTextAggregator`` waits for whole sentences (its docs put the cost at
200-300 ms per sentence), which is exactly the latency this stage exists to win back.
"""

from __future__ import annotations

import re

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

# A complete word: non-space characters followed by whitespace (the last word of the buffer is
# incomplete until the next token shows where it ends).
_COMPLETE_WORD = re.compile(r"\S+\s+")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*$")
_CLAUSE_END = re.compile(r"[,;:—–]+[\"'”’)\]]*$")
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. sr. jr. st. vs. e.g. i.e. approx. no. inc. ltd. co. mt. ft. jan. feb. "
    "mar. apr. jun. jul. aug. sep. sept. oct. nov. dec.".split()
)


def _is_abbreviation(word: str) -> bool:
    w = word.lower()
    return w in _ABBREVIATIONS or bool(re.fullmatch(r"[a-z]\.", w))


def _boundary(word: str) -> str | None:
    """``"sentence"``, ``"clause"`` or None for the punctuation a word ends with."""
    if _SENTENCE_END.search(word) and not _is_abbreviation(word):
        return "sentence"
    if _CLAUSE_END.search(word):
        return "clause"
    return None


class ChunkSplitter:
    """Pure chunking logic, separate from pipecat so it can be tested on any text.

    The chunks returned by :meth:`push` and :meth:`flush` always join back to the exact text
    pushed (whitespace included).
    """

    def __init__(self, config: ChunkerConfig | None = None):
        self._config = config or ChunkerConfig()
        self.reset()

    def reset(self) -> None:
        """Forget pending text; the next chunk is a first chunk again."""
        self._buffer = ""
        self._chunks_out = 0

    @property
    def pending(self) -> str:
        return self._buffer

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the chunks that are ready to speak."""
        self._buffer += text
        chunks = []
        while (cut := self._next_cut()) is not None:
            chunks.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            self._chunks_out += 1
        return chunks

    def flush(self) -> str | None:
        """Return whatever is left (end of the response)."""
        rest, self._buffer = self._buffer, ""
        if rest.strip():
            self._chunks_out += 1
            return rest
        return rest or None

    def _next_cut(self) -> int | None:
        first = self._chunks_out == 0
        words = 0
        for match in _COMPLETE_WORD.finditer(self._buffer):
            words += 1
            word = match.group().rstrip()
            boundary = _boundary(word)
            if first:
                if words >= self._config.first_chunk_words or boundary:
                    return match.end()
                continue
            if boundary == "sentence":
                return match.end()
            if boundary == "clause" and words >= self._config.min_words:
                return match.end()
            if words >= self._config.max_words:
                return match.end()
        return None


class WordChunker(FrameProcessor):
    """Turn ``LLMTextFrame`` tokens into ``AggregatedTextFrame`` speech chunks for the TTS stage.

    Tokens are consumed here; each chunk goes on as one ``AggregatedTextFrame``, which pipecat's
    ``TTSService`` speaks as it is (no further aggregation). The end of a response flushes what is
    left; an interruption drops it.
    """

    def __init__(self, config: ChunkerConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self._splitter = ChunkSplitter(config)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, LLMFullResponseStartFrame):
            self._splitter.reset()
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            for chunk in self._splitter.push(frame.text):
                await self._push_chunk(chunk)
        elif isinstance(frame, (LLMFullResponseEndFrame, EndFrame)):
            rest = self._splitter.flush()
            if rest and rest.strip():
                await self._push_chunk(rest)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._splitter.reset()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _push_chunk(self, text: str):
        await self.push_frame(AggregatedTextFrame(text, TextType.SENTENCE))
