"""One place that builds a session's services from a config: the CLI, the bot server, the bench
and the examples all come through here.

The TTS is a role: ``config.tts`` names an entry of :data:`TTS_ROLES`, which says how its model
loads (once per process, shared by every session) and how its stage is built. A second TTS is one
module with its stage and one :func:`register_tts` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipecat.services.tts_service import TextAggregationMode, TTSService

from voxtral_pipeline.config import PipelineConfig

if TYPE_CHECKING:
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService


@dataclass(frozen=True)
class TTSRole:
    """A TTS the pipeline can speak with.

    Parameters:
        name: The value of ``config.tts`` that selects it.
        load: Loads its model from the config (blocking; run it in a thread), shared by sessions.
        build: Builds one session's stage: ``build(config, model_or_None, aggregation_mode)``;
            without a model the stage loads its own in ``setup()``.
    """

    name: str
    load: Callable[[PipelineConfig], Any]
    build: Callable[[PipelineConfig, Any, TextAggregationMode], TTSService]


TTS_ROLES: dict[str, TTSRole] = {}


def register_tts(role: TTSRole) -> None:
    TTS_ROLES[role.name] = role


def tts_role(config: PipelineConfig) -> TTSRole:
    """The role ``config.tts`` names (a clear error for an unknown one)."""
    name = getattr(config, "tts", "kokoro")
    try:
        return TTS_ROLES[name]
    except KeyError:
        raise ValueError(f"unknown tts {name!r} (registered: {', '.join(sorted(TTS_ROLES))})") from None


def _load_kokoro(config: PipelineConfig) -> Any:
    from voxtral_pipeline.models.kokoro import load_kokoro

    k = config.kokoro
    extra = {"voices_file": k.voices_file} if k.voices_file else {}
    return load_kokoro(k.model, k.voice, k.device, k.lang_code, **extra)


def _build_kokoro(config: PipelineConfig, bundle: Any, mode: TextAggregationMode) -> TTSService:
    from voxtral_pipeline.processors.kokoro import KokoroTTSService

    return KokoroTTSService(config.kokoro, bundle=bundle, text_aggregation_mode=mode)


register_tts(TTSRole("kokoro", _load_kokoro, _build_kokoro))


@dataclass
class SharedModels:
    """Models loaded once per process and shared by every session's stages."""

    voxtral: Any = None  # VoxtralBundle; None with the vLLM backend
    tts: Any = None  # the TTS role's model

    @property
    def kokoro(self) -> Any:
        """The TTS model under its first role's name (readers from before the TTS was a role)."""
        return self.tts

    @classmethod
    def load(cls, config: PipelineConfig) -> SharedModels:
        """Load both models (blocking; call it in a thread). Raises ModelUnavailableError."""
        from voxtral_pipeline.processors.voxtral.backend import shared_bundle

        voxtral = shared_bundle(config.voxtral) if config.voxtral.backend == "transformers" else None
        return cls(voxtral, tts_role(config).load(config))


def build_services(
    config: PipelineConfig,
    models: SharedModels | None = None,
    *,
    min_new_tokens: int = 0,
    stock_aggregation: bool = False,
) -> tuple[VoxtralLLMService, TTSService]:
    """A session's Voxtral and TTS stages (on the shared models when given, else each loads its own).

    ``stock_aggregation`` has the TTS aggregate tokens into sentences itself (pipecat's stock
    behaviour, the bench's baseline) instead of taking the word chunker's chunks as they come.
    """
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService

    models = models or SharedModels()
    voxtral = VoxtralLLMService(config.voxtral, bundle=models.voxtral, min_new_tokens=min_new_tokens)
    mode = TextAggregationMode.SENTENCE if stock_aggregation else TextAggregationMode.TOKEN
    return voxtral, tts_role(config).build(config, models.tts, mode)
