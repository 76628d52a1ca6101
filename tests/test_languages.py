"""Session languages: one setting picks Voxtral's answer language and Kokoro's voice and G2P."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import LLMFullResponseEndFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline

from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
)
from voxtral_pipeline.config import ConfigError, KokoroConfig, PipelineConfig, VoxtralConfig, load_config
from voxtral_pipeline.languages import LANGUAGES
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.models.kokoro import KokoroBundle, load_g2p, random_voice_pack
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.kokoro import KokoroTTSService
from voxtral_pipeline.processors.voxtral import VoxtralLLMService


@pytest.mark.parametrize(
    "code, lang_code, voice",
    [
        ("en", "a", "af_heart"),
        ("es", "e", "ef_dora"),
        ("fr", "f", "ff_siwis"),
        ("hi", "h", "hf_alpha"),
        ("it", "i", "if_sara"),
        ("pt", "p", "pf_dora"),
    ],
)
def test_one_setting_sets_the_voice_the_g2p_and_the_answer_language(code, lang_code, voice):
    config = load_config(overrides={"language": code})
    assert (config.kokoro.lang_code, config.kokoro.voice) == (lang_code, voice)
    assert config.voxtral.language == code and config.voxtral.transcription_language == code
    # The G2P really speaks it (espeak-ng through misaki for all but English), offline.
    pipeline = load_g2p(lang_code)
    assert pipeline.lang_code == lang_code and [r.phonemes for r in pipeline("Hola")]


def test_explicit_choices_win_and_mismatches_are_clear_errors():
    c = load_config(overrides={"language": "fr", "kokoro.voice": "my_voice.pt"})
    assert c.kokoro.voice == "my_voice.pt" and c.kokoro.lang_code == "f"
    c = load_config(overrides={"language": "en", "kokoro.lang_code": "b"})
    assert c.kokoro.voice == "bf_emma"  # British G2P, British voice
    c = PipelineConfig.model_validate({"language": "es", "voxtral": {"transcription_language": None}})
    assert c.voxtral.transcription_language is None  # auto-detect, if asked for
    with pytest.raises(ConfigError, match="lang_code 'a' does not speak language 'fr'"):
        load_config(overrides={"language": "fr", "kokoro.lang_code": "a"})
    with pytest.raises(ConfigError, match="language: Input should be 'en', 'es', 'fr', 'hi', 'it' or 'pt'"):
        load_config(overrides={"language": "de"})  # Voxtral understands German; Kokoro has no voice
    with pytest.raises(ModelUnavailableError, match="lang_code 'j' is not supported"):
        load_g2p("j")


def test_instructions_say_which_language_to_answer_in():
    en = VoxtralLLMService(VoxtralConfig(instructions="Be brief."))
    assert en.context.instructions == "Be brief."  # the default language adds nothing
    for code in ("es", "fr", "hi", "it", "pt"):
        service = VoxtralLLMService(VoxtralConfig(instructions="Be brief.", language=code))
        assert service.context.instructions == f"Be brief.\n\n{LANGUAGES[code].instruction}"
        assert LANGUAGES[code].name in LANGUAGES[code].instruction


async def test_a_french_turn_is_spoken_with_the_french_voice_and_g2p(tiny_bundle, monkeypatch):
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    spoken: list[tuple[str, str, str]] = []
    real_phonemize = KokoroBundle.phonemize

    def phonemize(self, text):
        result = real_phonemize(self, text)
        spoken.append((self.pipeline.lang_code, self.voice_name, text))
        return result

    monkeypatch.setattr(KokoroBundle, "phonemize", phonemize)
    config = load_config(
        overrides={
            "language": "fr",
            "voxtral.model": "dummy:tiny",
            "voxtral.max_new_tokens": 16,
            "voxtral.temperature": 0.0,
            "voxtral.instructions": "Sois bref.",
            "voxtral.transcribe_history": False,
            "voxtral.warmup": False,
            "kokoro.model": "dummy:tiny",
            "kokoro.device": "cpu",
        }
    )
    voxtral = VoxtralLLMService(config.voxtral, bundle=tiny_bundle, min_new_tokens=8)  # words to say
    tts = KokoroTTSService(config.kokoro)
    async with StageHarness(Pipeline([voxtral, WordChunker(config.chunker), tts])) as h:
        await h.send(make_utterance(1.0))
        await h.wait_down(count(LLMFullResponseEndFrame))
        await h.wait_down(count(TTSStoppedFrame))

    prompt = tiny_bundle.tokenizer.decode(
        [i for i in spy.calls[0]["input_ids"] if i != AUDIO_TOKEN_ID], skip_special_tokens=False
    )
    assert "Sois bref.\n\nAlways answer in French. Réponds toujours en français.[/INST]" in prompt
    answer = voxtral.turn_stats[0].text
    assert answer.strip() and any(isinstance(f, TTSAudioRawFrame) for f in h.down)
    turn = [s for s in spoken if s[2] != "Hello there, how are you?" and s[2] != "Sure, I can help."]
    assert turn and all(lang == "f" and voice == "ff_siwis" for lang, voice, _ in turn)
    assert "".join(t for _, _, t in turn).split() == answer.split()  # the whole answer, in French G2P
    assert tts.bundle is not None and (tts.bundle.voice == random_voice_pack(0, "ff_siwis")).all()


def test_french_g2p_reads_french():
    french = [r.phonemes for r in load_g2p("f")("Bonjour, ça coûte 3,5 euros.")]
    assert "ʒ" in french[0] and "ʁ" in french[0]  # bonjour, euros: French sounds
    assert KokoroConfig(language="fr").voice == "ff_siwis"
