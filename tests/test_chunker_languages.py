"""The chunker's rules in the session languages' punctuation (docs/languages.md).

Spanish ¿ ¡, French spaced punctuation and « » with plain or no-break spaces, Hindi danda,
comma decimals, local abbreviations and titles: chunks still rejoin to the text, are cut only at
breaking whitespace, never start with punctuation that belongs to the word before, never end on an
opening mark, and never split a number. The stream is cut like Tekken's tokens (a word's
leading space comes with it), so whether punctuation follows a word is known once the word is.
"""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_chunker import FakeClock, _run
from voxtral_pipeline.config import ChunkerConfig
from voxtral_pipeline.processors.chunker import ChunkSplitter, WordStream, boundary

NBSP, NNBSP = "\u00a0", "\u202f"
LANG_WORDS = {
    "es": [
        "¿Qué",
        "tal?",
        "¡Hola!",
        "cuesta",
        "3,5",
        "euros.",
        "1.000.000",
        "Sra.",
        "García,",
        "sí;",
        "vale",
    ],
    "fr": [
        f"Bonjour{NNBSP}!",
        "Bonjour !",
        f"«{NBSP}Oui{NBSP}»",
        "« Non »",
        "ça",
        "coûte",
        f"12{NNBSP}000",
        "3,5",
        "€.",
        f"vrai{NNBSP}?",
        "Mme",
        "Dupont,",
        "voilà :",
        f"12,5{NBSP}%",
        "fin. »",
    ],
    "hi": ["नमस्ते।", "आप", "कैसे", "हैं?", "यह", "3,5", "रुपये", "है ।", "ठीक", "है,"],
    "it": ["Ciao,", "come", "stai?", "Sig.", "Rossi", "costa", "3,5", "euro.", "Dott.", "Bianchi!"],
    "pt": ["Olá,", "tudo", "bem?", "custa", "R$", "3,50.", "Sra.", "Silva", "obrigado!", "Av.", "Paulista"],
}
LANGS = st.sampled_from(sorted(LANG_WORDS))
POLICIES = st.sampled_from(["adaptive", "clause", "sentence", "words"])
ATTACHED = re.compile(r"[.,;:!?…।॥%»”)]+")
OPENING = re.compile(r"[«¿¡“(]+")
BREAKING = re.compile(rf"[^\S{NBSP}{NNBSP}]")


@settings(max_examples=300, deadline=None)
@given(
    LANGS.flatmap(lambda lang: st.lists(st.sampled_from(LANG_WORDS[lang]), min_size=1, max_size=30)),
    st.lists(st.integers(1, 7), max_size=60),
    POLICIES,
    st.integers(1, 5),
    st.integers(1, 8),
    st.sets(st.integers(0, 60)),
)
def test_chunks_respect_each_languages_punctuation(words, pieces, policy, first, min_words, timeouts):
    text = " " + " ".join(words)
    config = ChunkerConfig(
        policy=policy, first_chunk_words=first, min_words=min_words, max_words=min_words + 3
    )
    chunks = _run(text, _token_like(text, pieces), config, timeouts)
    assert "".join(chunks) == text
    pos = 0
    for chunk in chunks[:-1]:
        pos += len(chunk)
        # Cut only at breaking whitespace: a no-break space never ends a chunk.
        assert BREAKING.match(text[pos - 1]) and not text[pos].isspace(), (chunks, pos)
        tokens = BREAKING.split(chunk.strip())
        assert not OPENING.fullmatch(tokens[-1]), chunks  # never "«" | "Oui"
    for chunk in chunks[1:]:
        first_token = BREAKING.split(chunk.strip())[0]
        assert not ATTACHED.fullmatch(first_token), chunks  # never "Bonjour" | "!"
    for chunk in chunks:  # every word is whole (no number or abbreviation split)
        for token in BREAKING.split(chunk.strip()):
            assert not token or any(token in BREAKING.split(w) for w in words), (token, chunks)


def _token_like(text: str, pieces: list[int]) -> list[int]:
    """Piece sizes moved so no piece ends right after a space: like Tekken's tokens, which carry
    their leading space (" !" not "! "), so the next word has begun whenever a word is complete.
    """
    cuts, pos = [], 0
    for n in pieces:
        pos += n
        while 0 < pos < len(text) and BREAKING.match(text[pos - 1]):
            pos += 1
        if pos >= len(text):
            break
        cuts.append(pos)
    return [b - a for a, b in zip([0, *cuts], cuts, strict=False) if b > a]


@settings(max_examples=150, deadline=None)
@given(
    LANGS.flatmap(lambda lang: st.lists(st.sampled_from(LANG_WORDS[lang]), min_size=1, max_size=20)),
    st.lists(st.integers(1, 7)),
)
def test_display_words_keep_no_break_spaces_inside(words, pieces):
    text = " " + " ".join(words)
    stream, out, i = WordStream(), [], 0
    for n in pieces:
        out += stream.push(text[i : i + n])
        i += n
    out += stream.push(text[i:])
    out.append(stream.flush())
    assert "".join(out) == text
    assert all(len(BREAKING.split(w.strip())) <= 1 for w in out if w.strip())


def test_sentence_and_clause_marks_of_each_language():
    assert boundary("¿Qué tal?") == "sentence" and boundary("¡Hola!") == "sentence"
    assert boundary(f"Bonjour{NNBSP}!") == "sentence" and boundary("Bonjour !") == "sentence"
    assert boundary("voilà :") == "clause" and boundary(f"vrai{NNBSP};") == "clause"
    assert boundary("C'est la fin. »") == "sentence" and boundary(f"« Oui{NBSP}»") is None
    assert boundary("नमस्ते।") == "sentence" and boundary("ठीक है ।") == "sentence"
    assert boundary("Sra.") is None and boundary("Mme.") is None and boundary("Dott.") is None
    assert boundary("cuesta 3,5") is None and boundary("3,5.") == "sentence"


def test_french_spaced_marks_stay_with_their_word():
    s = ChunkSplitter(ChunkerConfig(policy="words", first_chunk_words=1, min_words=1), clock=FakeClock())
    # Token by token, each with its leading space, as Voxtral streams them.
    assert s.push("Bonjour") == [] and s.push(" !") == []  # "Bonjour" | "!" would read badly
    assert s.push(" «") == ["Bonjour ! "]
    assert s.push(" Oui") == [] and s.push(" »") == []  # not after "«", not before "»"
    assert s.push(" dit") == ["« Oui » "]
    assert s.push(" Mme") == ["dit "] and s.push(" Dupont.") == []  # the title waits for the name
    assert s.push(" Voilà") == ["Mme Dupont. "]


def test_spanish_titles_and_comma_decimals():
    s = ChunkSplitter(ChunkerConfig(policy="clause", first_chunk_words=1, min_words=50), clock=FakeClock())
    assert s.push("La Sra. García paga 3,5 euros. Gracias ") == ["La Sra. García paga 3,5 euros. "]


def test_hindi_danda_ends_a_sentence():
    s = ChunkSplitter(ChunkerConfig(policy="sentence"), clock=FakeClock())
    assert s.push("नमस्ते। आप कैसे हैं? ठीक ") == ["नमस्ते। ", "आप कैसे हैं? "]
