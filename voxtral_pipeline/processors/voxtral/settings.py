"""Runtime-updatable settings of the Voxtral stage, in pipecat's settings-dataclass style.

``LLMUpdateSettingsFrame(delta=VoxtralLLMSettings(temperature=0.0, max_tokens=64))`` changes them
mid-session; the next request reads them. Everything else (model, backend, memory, KV cache) is
the session's :class:`~voxtral_pipeline.config.VoxtralConfig`, fixed when the stage is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.services.settings import LLMSettings

from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.languages import instructions_for


@dataclass
class VoxtralLLMSettings(LLMSettings):
    """Settings for :class:`~voxtral_pipeline.processors.voxtral.processor.VoxtralLLMService`.

    Voxtral reads ``system_instruction`` (placed in the first user turn: the model takes no system
    prompt with audio), ``temperature``, ``top_p``, ``max_tokens`` and ``seed``; the other
    ``LLMSettings`` fields are ignored.
    """

    @classmethod
    def from_config(cls, config: VoxtralConfig) -> VoxtralLLMSettings:
        """Every field given (pipecat validates that at start), from the session's config."""
        return cls(
            model=config.model,
            system_instruction=instructions_for(config.instructions, config.language),
            temperature=config.temperature,
            max_tokens=config.max_new_tokens,
            top_p=config.top_p,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=config.seed,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            use_provider_thinking_default=False,
        )
