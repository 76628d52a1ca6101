"""The languages a session can speak: where what Voxtral understands meets what Kokoro speaks.

Voxtral (model card) understands English, Spanish, French, Portuguese, Hindi, German, Dutch and
Italian. Kokoro-82M (v1.0) speaks American and British English (misaki G2P), and Spanish, French,
Hindi, Italian and Brazilian Portuguese (espeak-ng G2P), plus Japanese and Mandarin. A session
language must be in both: en, es, fr, hi, it, pt (no Kokoro voice for German or Dutch; Voxtral
does not list Japanese or Mandarin).

Each language fixes the Kokoro G2P code (misaki/kokoro ``lang_code``), a default voice from
Kokoro-82M's VOICES.md, the sentence that tells Voxtral to answer in it, the filler said while
a slow tool runs, and the apology said when an answer fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LanguageCode = Literal["en", "es", "fr", "hi", "it", "pt"]


@dataclass(frozen=True)
class Language:
    """One supported session language.

    Parameters:
        code: ISO 639-1 code (also Voxtral's transcription language).
        name: English name.
        kokoro_lang_codes: Kokoro/misaki G2P codes that speak it (the first is the default).
        voice: Default Kokoro-82M voice.
        instruction: Told to Voxtral after the instructions (none for English, the default).
        filler: Said when a tool call takes long.
        apology: Said when an answer fails (the model raised, ran out of memory).
    """

    code: str
    name: str
    kokoro_lang_codes: tuple[str, ...]
    voice: str
    instruction: str
    filler: str
    apology: str


LANGUAGES: dict[str, Language] = {
    "en": Language(
        "en",
        "English",
        ("a", "b"),
        "af_heart",
        "",
        "One moment.",
        "Sorry, something went wrong on my side. Could you say that again?",
    ),
    "es": Language(
        "es",
        "Spanish",
        ("e",),
        "ef_dora",
        "Always answer in Spanish. Responde siempre en español.",
        "Un momento.",
        "Lo siento, algo ha fallado por mi parte. ¿Puedes repetirlo?",
    ),
    "fr": Language(
        "fr",
        "French",
        ("f",),
        "ff_siwis",
        "Always answer in French. Réponds toujours en français.",
        "Un instant.",
        "Désolé, quelque chose n'a pas marché de mon côté. Pouvez-vous répéter ?",
    ),
    "hi": Language(
        "hi",
        "Hindi",
        ("h",),
        "hf_alpha",
        "Always answer in Hindi. हमेशा हिंदी में उत्तर दें।",
        "एक क्षण।",
        "क्षमा करें, मेरी ओर से कुछ गड़बड़ हो गई। क्या आप फिर से कह सकते हैं?",
    ),
    "it": Language(
        "it",
        "Italian",
        ("i",),
        "if_sara",
        "Always answer in Italian. Rispondi sempre in italiano.",
        "Un momento.",
        "Scusa, qualcosa è andato storto da parte mia. Puoi ripetere?",
    ),
    "pt": Language(
        "pt",
        "Portuguese",
        ("p",),
        "pf_dora",
        "Always answer in Portuguese. Responda sempre em português.",
        "Um momento.",
        "Desculpe, algo deu errado do meu lado. Pode repetir?",
    ),
}

#: The default voice for British English (``lang_code = "b"``).
BRITISH_VOICE = "bf_emma"

#: Kokoro G2P code -> session language.
LANGUAGE_OF_LANG_CODE: dict[str, str] = {
    lc: lang.code for lang in LANGUAGES.values() for lc in lang.kokoro_lang_codes
}


def language(code: str) -> Language:
    """The supported language ``code``; a ValueError naming the supported ones otherwise."""
    try:
        return LANGUAGES[code]
    except KeyError:
        raise ValueError(
            f"language {code!r} is not supported: use one of {', '.join(LANGUAGES)} "
            "(where Voxtral's and Kokoro's languages meet)"
        ) from None


def instructions_for(instructions: str | None, code: str) -> str | None:
    """The instructions with the sentence that says which language to answer in."""
    extra = language(code).instruction
    if not extra:
        return instructions
    return f"{instructions}\n\n{extra}" if instructions else extra
