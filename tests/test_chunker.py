"""Word chunker: chunks and display words rejoin to the text, protected tokens are never split,
first chunk early (words, clause mark or timeout), later chunks grow with the queued audio."""

import re

import pytest
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
from voxtral_pipeline.frames import DisplayTextFrame, SynthesisSpeedFrame
from voxtral_pipeline.processors.chunker import ChunkSplitter, WordChunker, WordStream, boundary

PROTECTED = [
    "$12.50",
    "3.14",
    "12,000",
    "e.g.",
    "Dr.",
    "john@example.com",
    "https://x.org/a.b?c=1",
    "U.S.",
    "don't",
    "5%",
]
# Several words read as one unit: no chunk may end inside them.
UNITS = ["Dr. Smith", "12 000", "J. Doe", "1 234 567", "Mr. Jones,"]
WORDS = st.sampled_from(
    ["hello", "there,", "friend.", "the", "price", "is", "ok;", "yes!", "why?", "and", "so:", "7", *PROTECTED]
)
POLICIES = st.sampled_from(["adaptive", "clause", "sentence", "words"])


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _run(text: str, pieces: list[int], config: ChunkerConfig | None = None, timeouts=(), clock=None):
    """Feed ``text`` in pieces; call ``timeout()`` after the pieces listed in ``timeouts``."""
    s = ChunkSplitter(config, clock=clock or FakeClock())
    out, i = [], 0
    for k, n in enumerate(pieces):
        out += s.push(text[i : i + n])
        i += n
        if k in timeouts:
            out += s.timeout()
    out += s.push(text[i:])
    rest = s.flush()
    if rest:
        out.append(rest)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(WORDS, st.sampled_from(UNITS)), min_size=1, max_size=40),
    st.lists(st.integers(1, 7), max_size=60),
    POLICIES,
    st.integers(1, 5),
    st.integers(1, 8),
    st.sets(st.integers(0, 60)),
    st.floats(0.0, 3.0),
)
def test_chunks_rejoin_and_never_cut_protected_tokens(
    words, pieces, policy, first, min_words, timeouts, growth
):
    text = " " + " ".join(words)
    config = ChunkerConfig(
        policy=policy, first_chunk_words=first, min_words=min_words, max_words=min_words + 3, growth=growth
    )
    chunks = _run(text, pieces, config, timeouts)
    assert "".join(chunks) == text
    # Every cut lies at whitespace: no word (so no number, email, URL, abbreviation) is split.
    cuts, pos = set(), 0
    for c in chunks[:-1]:
        pos += len(c)
        cuts.add(pos)
        assert text[pos - 1].isspace() and not text[pos].isspace()
    for c in chunks:
        for token in re.findall(r"\S+", c):
            assert any(token in w.split() for w in words)
    # ... and never inside a unit of several words.
    for unit in UNITS:
        for m in re.finditer(re.escape(unit), text):
            assert not any(m.start() < cut < m.end() for cut in cuts), (unit, chunks)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(WORDS, st.sampled_from(UNITS)), min_size=1, max_size=30), st.lists(st.integers(1, 7))
)
def test_display_words_rejoin_and_come_out_when_complete(words, pieces):
    text = " " + " ".join(words)
    stream, out, i = WordStream(), [], 0
    for n in pieces:
        got = stream.push(text[i : i + n])
        i += n
        out += got
        # everything up to the last whitespace seen so far has been shown
        shown = "".join(out)
        assert shown == text[: len(shown)]
        assert not text[len(shown) : i].strip() or not re.search(r"\s", text[len(shown) : i].lstrip())
    out += stream.push(text[i:])
    out.append(stream.flush())
    assert "".join(out) == text
    assert all(len(w.split()) <= 1 for w in out)


def test_boundaries():
    assert boundary("friend.") == "sentence" and boundary("really?!") == "sentence"
    assert boundary("there,") == "clause" and boundary('so:"') == "clause"
    assert boundary("Dr.") is None and boundary("e.g.") is None and boundary("U.S.") is None
    assert boundary("$12.50") is None and boundary("hello") is None and boundary("") is None
    assert boundary("It costs $12.50. ") == "sentence"


def test_first_chunk_at_words_or_clause_then_phrases():
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=2, min_words=4, growth=0.0), clock=FakeClock())
    assert s.push(" Sure") == []  # the word may still continue
    assert s.push(" thing") == []  # one complete word of two
    assert s.push(" I") == [" Sure thing "]
    assert s.push(" can help you, and") == ["I can help you, "]
    assert s.push(" then. Bye") == ["and then. "]
    assert s.flush() == "Bye"

    s = ChunkSplitter(ChunkerConfig(first_chunk_words=5), clock=FakeClock())
    assert s.push("Yes, I") == ["Yes, "]  # a clause mark ends the first chunk early


def test_abbreviation_and_numbers_are_not_sentence_ends():
    s = ChunkSplitter(ChunkerConfig(policy="clause", first_chunk_words=1, min_words=50), clock=FakeClock())
    out = s.push("Hi Dr. Smith, it costs $12.50 today. Next ")
    assert out == ["Hi Dr. Smith, ", "it costs $12.50 today. "]


def test_titles_and_spaced_numbers_are_kept_together():
    s = ChunkSplitter(ChunkerConfig(policy="words", first_chunk_words=1, min_words=1), clock=FakeClock())
    assert s.push("Dr. ") == []  # held until the name arrives
    assert s.push("Smith paid 12 ") == ["Dr. Smith ", "paid "]  # "12" waits: "12 000" or "12 dogs"?
    assert s.push("000 dollars ") == ["12 000 ", "dollars "]


def test_max_words_bounds_a_long_chunk():
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=1, min_words=4, max_words=5), clock=FakeClock())
    out = s.push("a b c d e f g h i j k ")
    assert out[0] == "a "
    assert all(len(c.split()) <= 5 for c in out)


def test_sentence_and_words_policies():
    text = "Well, I think so, but let me check. It is fine. "
    s = ChunkSplitter(ChunkerConfig(policy="sentence"), clock=FakeClock())
    assert s.push(text) == ["Well, I think so, but let me check. ", "It is fine. "]
    s = ChunkSplitter(ChunkerConfig(policy="words", first_chunk_words=1, min_words=3), clock=FakeClock())
    assert s.push(text) == ["Well, ", "I think so, ", "but let me ", "check. It is "]
    assert s.flush() == "fine. "


def test_first_chunk_timeout_releases_complete_words_only():
    clock = FakeClock()
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=3, first_chunk_timeout_ms=50), clock=clock)
    assert s.push(" Hmm") == [] and s.timeout_delay() is None  # no complete word yet
    assert s.push(" let") == []
    assert s.timeout_delay() == pytest.approx(0.05)
    assert s.timeout() == [" Hmm "]  # "let" may still continue
    assert s.push(" me see") == []
    # later chunks do not use the first-chunk timeout while audio is queued
    assert s.timeout() == []
    assert ChunkSplitter(ChunkerConfig(first_chunk_timeout_ms=0)).timeout_delay() is None


def test_adaptive_chunks_grow_with_the_queued_audio():
    clock = FakeClock()
    config = ChunkerConfig(first_chunk_words=1, min_words=2, words_per_second=3.0, growth=1.0)
    s = ChunkSplitter(config, clock=clock)
    assert s.push("Sure, ") == ["Sure, "]  # ~0.33 s of speech queued
    assert s.push("I can, ") == ["I can, "]  # little queued: the clause goes
    long = "so here is a long answer, which keeps going, and going on, until it ends. "
    s2 = ChunkSplitter(config, clock=clock)
    s2.push("Sure, ")
    s2._words_out = 30  # as if ten seconds of speech were queued
    got = s2.push(long)
    assert got == [long]  # every clause mark skipped: one chunk up to the sentence end
    clock.t += 60.0  # the queue has played out
    assert s2.queued_speech_s() == 0.0
    assert s2.push(long) == [
        "so here is a long answer, ",
        "which keeps going, ",
        "and going on, ",
        "until it ends. ",
    ]


def test_adaptive_chunks_fit_a_slow_tts_and_grow_on_a_fast_one():
    text = "I can help you with that today, and with anything else. "
    clock = FakeClock()
    slow = ChunkSplitter(ChunkerConfig(first_chunk_words=2, min_words=4), clock=clock)
    slow.set_rtf(0.6)  # a CPU: 0.6 s of synthesis per second of speech
    assert slow.push("Sure, ") == ["Sure, "]  # ~0.33 s queued, 0.2 s of it still to synthesize
    assert slow.budget_words() == pytest.approx((1 / 3 - 0.2) * 3 / 0.6)
    # cut short (first_chunk_words at least) rather than leave the listener waiting
    chunks = slow.push(text)
    assert chunks[0] == "I can " and "".join(chunks) + slow.pending == text
    assert max(len(c.split()) for c in chunks) <= 4  # a slow TTS with a short queue: small chunks
    clock.t += 1.0
    slow2 = ChunkSplitter(ChunkerConfig(first_chunk_words=2, min_words=4), clock=clock)
    slow2.set_rtf(0.6)
    slow2.push("Sure, ")
    slow2._words_out = 12  # as if four seconds of speech were queued
    assert slow2.budget_words() > 10  # a long queue affords a long chunk, even on a slow TTS
    passed = ChunkSplitter(ChunkerConfig(first_chunk_words=2, min_words=2), clock=clock)
    passed.set_rtf(0.6)
    passed.push("Sure, ")
    passed._words_out = 6  # about 1.7 s of speech queued: a budget of some 8 words
    got = passed.push("The capital is Paris, which has been the center for ages. ")
    # the clause mark is passed for a longer chunk; when the budget runs out the cut falls back to it
    assert got[0] == "The capital is Paris, "
    again = ChunkSplitter(ChunkerConfig(first_chunk_words=2, min_words=4), clock=clock)
    again.set_rtf(0.6)
    again.push("Sure, ")
    assert again.push("Well I know. ") == ["Well I know. "]  # not "Well I " | "know.": the mark is next
    fast = ChunkSplitter(ChunkerConfig(first_chunk_words=1, min_words=4), clock=clock)
    fast.set_rtf(0.02)  # a GPU
    assert fast.push("Sure, ") == ["Sure, "]
    assert fast.push(text) == [text]  # the whole sentence: the clause mark is passed
    fast.set_rtf(float("nan"))
    fast.set_rtf(-1)
    assert fast.rtf == pytest.approx(0.02)


def test_adaptive_stall_flushes_before_the_queue_runs_dry():
    clock = FakeClock()
    s = ChunkSplitter(ChunkerConfig(first_chunk_words=1, words_per_second=2.0), clock=clock)
    assert s.push("Well ") == ["Well "]  # 0.5 s queued
    assert s.push("the answer is ") == []
    assert s.timeout_delay() == pytest.approx(0.2)  # 0.5 s queued minus the 0.3 s margin
    assert s.timeout() == []  # still too early
    clock.t += 0.25
    assert s.timeout() == ["the answer is "]


#
# The processor
#


def _texts(frames, cls):
    return [f.text for f in frames if type(f) is cls]


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
        SleepFrame(sleep=0.05),
        InterruptionFrame(),
        SleepFrame(sleep=1.3),  # the first-chunk timeout was cancelled: " Gone " never goes
    ]
    config = ChunkerConfig(first_chunk_words=2, first_chunk_timeout_ms=1000)
    down, _ = await run_test(WordChunker(config), frames_to_send=frames)
    assert _texts(down, AggregatedTextFrame) == [" Hello there ", "my"]
    assert _texts(down, DisplayTextFrame) == [" Hello ", "there ", "my", " Gone "]
    assert not any(isinstance(f, LLMTextFrame) for f in down)
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in down) == 1
    display = [f for f in down if isinstance(f, DisplayTextFrame)]
    assert all(f.skip_tts and not f.append_to_context for f in display)


async def test_processor_takes_the_tts_speed_from_upstream_feedback():
    chunker = WordChunker(ChunkerConfig())
    down, up = await run_test(chunker, frames_to_send=[SynthesisSpeedFrame(rtf=0.4)])
    assert chunker.splitter.rtf == pytest.approx(0.4)
    assert not [f for f in [*down, *up] if isinstance(f, SynthesisSpeedFrame)]  # consumed


async def test_processor_first_chunk_timeout():
    frames = [
        LLMFullResponseStartFrame(),
        LLMTextFrame(" Let"),
        LLMTextFrame(" me"),
        SleepFrame(sleep=0.3),  # the model stalls: "Let " goes on after the timeout
        LLMTextFrame(" think."),
        LLMFullResponseEndFrame(),
    ]
    config = ChunkerConfig(first_chunk_words=4, first_chunk_timeout_ms=50)
    down, _ = await run_test(WordChunker(config), frames_to_send=frames)
    assert _texts(down, AggregatedTextFrame) == [" Let ", "me think."]
    # each display word went on before the chunk that speaks it
    kinds = [
        (type(f).__name__, f.text) for f in down if isinstance(f, (AggregatedTextFrame, DisplayTextFrame))
    ]
    assert kinds.index(("DisplayTextFrame", " Let ")) < kinds.index(("AggregatedTextFrame", " Let "))
