"""Prompts and audio features: token ids of a chat or a transcription request, mel features.

Audio is tokenized without computing features (mistral-common pads each utterance to 30-s chunks
of 375 ``[AUDIO]`` tokens); mel features are computed only for the audio in a prompt's uncached
suffix, on the GPU when there is one. A transcription request's features come with its token ids
and are computed once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from voxtral_pipeline.engine.tokens import SpecialTokens
from voxtral_pipeline.models.voxtral import AUDIO_TOKENS_PER_CHUNK, SAMPLE_RATE, VoxtralBundle

MAX_SOURCE_POSITIONS = 3000
SAMPLES_PER_CHUNK = 30 * SAMPLE_RATE


class PromptBuilder:
    """Token ids and mel features for one loaded model."""

    def __init__(self, bundle: VoxtralBundle, tokens: SpecialTokens, *, mel_on_device: bool = True):
        self.bundle = bundle
        self.tokens = tokens
        self.mel_device = bundle.device if mel_on_device and bundle.device.startswith("cuda") else None

    def chat(
        self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[np.ndarray]]:
        """Token ids and (30-s padded) audio arrays of a chat, without computing any mel features."""
        enc = self.bundle.tokenizer.apply_chat_template(
            [conversation], tools=tools or None, tokenize=True, return_dict=True, return_tensors=None
        )
        audios = enc.get("audio")
        return list(enc["input_ids"][0]), [np.asarray(a, dtype=np.float32) for a in (audios or [])]

    def transcription(self, audio: np.ndarray, language: str | None) -> tuple[list[int], torch.Tensor]:
        """Token ids and mel features of a transcription request (the features computed once, here)."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        enc = self.bundle.processor.apply_transcription_request(
            audio=samples,
            model_id=self.bundle.spec,
            language=language,
            sampling_rate=SAMPLE_RATE,
            format=["wav"],
        )
        features = enc["input_features"].to(self.bundle.device, dtype=self.bundle.dtype)
        return enc["input_ids"][0].tolist(), features

    def features(self, audios: list[np.ndarray]) -> torch.Tensor | None:
        """Mel features of audio arrays, (n_chunks, 128, 3000), on the model's device and dtype."""
        if not audios:
            return None
        kwargs: dict[str, Any] = {
            "sampling_rate": SAMPLE_RATE,
            "padding": True,
            "truncation": False,
            "pad_to_multiple_of": SAMPLES_PER_CHUNK,
            "return_tensors": "pt",
        }
        if self.mel_device is not None:
            kwargs["device"] = self.mel_device
        feats = self.bundle.processor._retrieve_input_features(audios, MAX_SOURCE_POSITIONS, **kwargs)
        return feats.to(self.bundle.device, dtype=self.bundle.dtype)

    def suffix_audios(self, audios: list[np.ndarray], suffix_ids: list[int]) -> list[np.ndarray]:
        """The audio arrays whose tokens lie in the uncached suffix (the last ones)."""
        chunks = sum(1 for t in suffix_ids if t == self.tokens.audio) // AUDIO_TOKENS_PER_CHUNK
        picked: list[np.ndarray] = []
        n = 0
        for audio in reversed(audios):
            if n >= chunks:
                break
            picked.insert(0, audio)
            n += max(1, -(-len(audio) // SAMPLES_PER_CHUNK))
        return picked

    def audio_tokens(self, ids: list[int]) -> int:
        return sum(1 for t in ids if t == self.tokens.audio)
