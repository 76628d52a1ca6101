"""Word chunker: chunks rejoin to the text, protected tokens are never split, first word at once."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from pipecat.frames.frames import (
    AggregatedTextFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voxtral_pipeline.config import ChunkerConfig
from voxtral_pipeline.processors.chunker import ChunkSplitter, WordChunker

PROTECTED = ["$12.50", "3.14", "12,000", "e.g.", "Dr.", "john@example.com", "https://x.org/a.b?c=1", "U.S."]
WORDS = st.sampled_from(
    ["hello", "there,", "friend.", "the", "price", "is", "ok;", "yes!", "why?", "and", "so:", *PROTECTED]
)


def _chunks(text: str, pieces: list[int], config: ChunkerConfig | None = None) -> list[str]:
    s = ChunkSplitter(config)
    out, i = [], 0
    for n in pieces:
        out += s.push(text[i : i + n])
        i += n
    out += s.push(text[i:])
    rest = s.flush()
    if rest:
        out.append(rest)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=40), st.lists(st.integers(1, 7), max_size=60))
def test_chunks_rejoin_and_never_cut_protected_tokens(words, pieces):
    text = " " + " ".join(words)
    chunks = _chunks(text, pieces)
    assert "".join(chunks) == text
    # Every cut lies at whitespace: no word (so no number, email, URL, abbreviation) is split.
    pos = 0
    for c in chunks[:-1]:
        pos += len(c)
        assert text[pos - 1].isspace() and not text[pos].isspace()
    for c in chunks:
        for token in re.findall(r"\S+", c):
            assert token in words


def test_first_word_goes_out_at_once_then_phrases():
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=1, min_words=4))
    assert s.push(" Sure") == []  # the word may still continue
    assert s.push(" thing") == [" Sure "]
    assert s.push(" I can help you, and") == ["thing I can help you, "]
    assert s.push(" then. Bye") == ["and then. "]
    assert s.flush() == "Bye"


def test_abbreviation_and_numbers_are_not_sentence_ends():
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=1, min_words=50))
    out = s.push("Hi Dr. Smith, it costs $12.50 today. Next ")
    assert out == ["Hi ", "Dr. Smith, it costs $12.50 today. "]


def test_max_words_bounds_a_long_chunk():
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=1, min_words=4, max_words=5))
    out = s.push("a b c d e f g h i j k ")
    assert out[0] == "a "
    assert all(len(c.split()) <= 5 for c in out)


async def test_processor_flushes_on_end_and_drops_on_interruption():
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame(" Hello"),
        LLMTextFrame(" there"),
        LLMTextFrame(" my"),
        LLMFullResponseEndFrame(),
        LLMFullResponseStartFrame(),
        LLMTextFrame(" Gone"),
        LLMTextFrame(" soon"),
        SleepFrame(sleep=0.2),
        InterruptionFrame(),
    ]
    down, _ = await run_test(WordChunker(), frames_to_send=frames)
    texts = [f.text for f in down if isinstance(f, AggregatedTextFrame)]
    assert texts == [" Hello ", "there my", " Gone "]
    assert not any(isinstance(f, LLMTextFrame) for f in down)
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in down) == 1
