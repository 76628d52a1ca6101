"""Transports: one module each; the stages never import them."""

from __future__ import annotations

from typing import Any

from voxtral_pipeline.config import PipelineConfig

#: Bot audio leaves in 20 ms packets (pipecat's default is 40 ms: 20 ms of latency for nothing).
OUTPUT_PACKET_MS = 20


def audio_params(config: PipelineConfig, packet_ms: int = OUTPUT_PACKET_MS) -> dict[str, Any]:
    """Transport-params fields every live transport shares: audio both ways at the pipeline rates."""
    return dict(
        audio_in_enabled=True,
        audio_in_sample_rate=config.audio.in_sample_rate,
        audio_out_enabled=True,
        audio_out_sample_rate=config.audio.out_sample_rate,
        audio_out_10ms_chunks=packet_ms // 10,
    )
