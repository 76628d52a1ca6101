"""WebSocket transport: pipecat's FastAPI WebSocket transport with its protobuf serializer.

One WebSocket connection is one session. The wire format is pipecat's ``frames.proto``
(``pipecat/frames/frames.proto``), one protobuf ``Frame`` per binary message:

- client -> bot: ``audio`` frames (16-bit little-endian mono PCM; any rate, 16 kHz preferred;
  20 ms per message is a good size), and optionally ``message`` frames (a JSON string).
- bot -> client: ``audio`` frames of ``packet_ms`` (20 ms by default) at the pipeline's output
  rate (24 kHz), ``text`` frames, and ``message`` frames carrying the JSON client events of
  :mod:`voxtral_pipeline.transports.events` (bot text word by word, each turn's latency waterfall).

A message the bot cannot use (not protobuf, a text message, bad audio, larger than
``max_message_bytes``) is logged and dropped; the session goes on. See docs/transports.md and
examples/websocket_client.py.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, InputTransportMessageFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.transports import audio_params

MAX_INPUT_RATE = 48000
MIN_INPUT_RATE = 8000


class SafeProtobufSerializer(ProtobufFrameSerializer):
    """pipecat's protobuf serializer that drops (and logs) what it cannot use instead of raising.

    pipecat's own receive loop ends the session on the first exception from ``deserialize``;
    here a malformed, oversized or nonsensical message is dropped and counted, and the session
    goes on.
    """

    def __init__(self, max_message_bytes: int = 262144):
        super().__init__()
        self._max = max_message_bytes
        self.dropped = 0

    def _drop(self, why: str) -> None:
        self.dropped += 1
        # A hostile client could send thousands: log the first few at warning level only.
        log = logger.warning if self.dropped <= 5 else logger.debug
        log(f"websocket: dropped a client message ({why})")

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, str):
            self._drop("text message; the protocol is binary protobuf")
            return None
        if len(data) > self._max:
            self._drop(f"{len(data)} bytes, over the {self._max}-byte limit")
            return None
        try:
            frame = await super().deserialize(data)
        except Exception as e:
            self._drop(f"not a protobuf Frame: {e.__class__.__name__}")
            return None
        if frame is None:
            self._drop("not a frame the bot takes")
            return None
        if isinstance(frame, InputAudioRawFrame):
            channels = frame.num_channels or 1
            if not MIN_INPUT_RATE <= frame.sample_rate <= MAX_INPUT_RATE:
                self._drop(f"audio sample rate {frame.sample_rate} out of range")
                return None
            if channels not in (1, 2) or not frame.audio or len(frame.audio) % (2 * channels):
                self._drop("audio is not whole 16-bit samples")
                return None
            if channels == 2:  # the pipeline hears mono
                import numpy as np

                pcm = np.frombuffer(frame.audio, dtype="<i2").reshape(-1, 2).mean(axis=1)
                return InputAudioRawFrame(pcm.astype("<i2").tobytes(), frame.sample_rate, 1)
            return frame
        if isinstance(frame, InputTransportMessageFrame):
            return frame
        self._drop(f"{type(frame).__name__} is not accepted from clients")
        return None


def websocket_params(config: PipelineConfig, **overrides: Any) -> FastAPIWebsocketParams:
    """Transport parameters for one WebSocket session."""
    ws = config.transport.websocket
    server = config.transport.server
    params: dict[str, Any] = dict(
        **audio_params(config, ws.packet_ms),
        add_wav_header=False,
        serializer=SafeProtobufSerializer(server.max_message_bytes),
        session_timeout=int(server.session_timeout_secs) if server.session_timeout_secs else None,
        allowed_origins=[],
    )
    params.update(overrides)
    return FastAPIWebsocketParams(**params)


def build_websocket_transport(config: PipelineConfig, websocket: Any) -> FastAPIWebsocketTransport:
    """A transport for one accepted FastAPI/Starlette ``WebSocket``."""
    return FastAPIWebsocketTransport(websocket, websocket_params(config))
