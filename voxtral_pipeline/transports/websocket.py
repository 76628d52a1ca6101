"""WebSocket transport: pipecat's FastAPI WebSocket transport with its protobuf serializer.

One WebSocket connection is one session. The wire format is pipecat's ``frames.proto``
(``pipecat/frames/frames.proto``), one protobuf ``Frame`` per binary message:

- client -> bot: ``audio`` frames (16-bit little-endian PCM, mono or stereo, 8 to 48 kHz, resampled
  to the pipeline's 16 kHz on arrival; 16 kHz mono saves the work; 20 ms per message is a good
  size), and optionally ``message`` frames (a JSON string).
- bot -> client: ``audio`` frames of ``packet_ms`` (20 ms by default) at the pipeline's output
  rate (24 kHz), ``text`` frames, and ``message`` frames carrying the JSON client events of
  :mod:`voxtral_pipeline.transports.events` (bot text word by word, each turn's latency waterfall).

A message the bot cannot use (not protobuf, a text message, bad audio, a rate out of range, larger
than ``max_message_bytes``) is logged and dropped; the session goes on. Audio is taken at real-time
pace: a client may run ``max_audio_ahead_secs`` ahead of real time, and what it sends beyond that
is dropped and logged (:class:`AudioPacer`); the queue between the socket and the pipeline holds at
most that much audio too, dropping its oldest (:class:`BoundedWebsocketInputTransport`). So one
client flooding the bot costs the others only the parsing of its messages. See docs/transports.md,
docs/reliability.md and examples/websocket_client.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pipecat.frames.protobufs.frames_pb2 as frame_protos
from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import Frame, InputAudioRawFrame, InputTransportMessageFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketInputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.transports import audio_params

#: Close code for a client disconnected for flooding ("policy violation").
WS_CLOSE_FLOOD = 1008
MAX_INPUT_RATE = 48000
MIN_INPUT_RATE = 8000


#: Refill rate of the audio allowance: real time, plus 5 % for a client whose clock runs a little fast.
PACE = 1.05


class AudioPacer:
    """A token bucket of audio seconds: a client may be at most ``ahead_secs`` ahead of real time.

    Audio over the allowance is refused (the sender's newest, not what is already queued), counted
    and logged: the first time at warning level, then once per 30 s of audio dropped. Once
    ``flood_secs`` of audio has been dropped, ``on_flood`` is called (once): the server then
    disconnects the sender, whose every message still costs the server a parse.
    """

    def __init__(
        self,
        ahead_secs: float,
        clock: Callable[[], float] = time.monotonic,
        flood_secs: float | None = None,
        on_flood: Callable[[], None] | None = None,
    ):
        self.ahead_secs = ahead_secs
        self._clock = clock
        self._allowance = ahead_secs
        self._last: float | None = None
        self.dropped_secs = 0.0
        self.taken_secs = 0.0
        self.first: float | None = None  # clock time of the first audio
        self._logged_at = -1.0
        self.flood_secs = flood_secs
        self.on_flood = on_flood
        self.flooded = False

    def take(self, secs: float) -> bool:
        """Whether ``secs`` of audio arriving now is accepted."""
        now = self._clock()
        if self._last is not None:
            self._allowance = min(self.ahead_secs, self._allowance + (now - self._last) * PACE)
        else:
            self.first = now
        self._last = now
        if self._allowance + 1e-9 >= min(secs, self.ahead_secs):  # one long message may borrow ahead
            self._allowance -= secs
            self.taken_secs += secs
            return True
        self.dropped_secs += secs
        if self._logged_at < 0 or self.dropped_secs - self._logged_at >= 30:
            log = logger.warning if self._logged_at < 0 else logger.info
            log(
                f"websocket: the client sends audio faster than real time; dropping what is over "
                f"{self.ahead_secs:g} s ahead ({self.dropped_secs:.1f} s dropped so far)"
            )
            self._logged_at = self.dropped_secs
        if self.flood_secs is not None and self.dropped_secs >= self.flood_secs and not self.flooded:
            self.flooded = True
            logger.warning(
                f"websocket: {self.dropped_secs:.0f} s of audio dropped for running ahead of real time; "
                "disconnecting the client"
            )
            if self.on_flood is not None:
                self.on_flood()
        return False


class BoundedWebsocketInputTransport(FastAPIWebsocketInputTransport):
    """pipecat's WebSocket input with a bounded audio queue: when full, the oldest audio goes.

    pipecat's queue between the receive loop and the pipeline is unbounded; a pipeline that falls
    behind (a starved CPU) would let it grow for as long as the client sends.
    """

    def __init__(self, *args: Any, max_queued: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_queued = max_queued
        self.dropped_frames = 0

    async def push_audio_frame(self, frame: InputAudioRawFrame):
        if self._params.audio_in_enabled and not self._paused:
            queue = self._audio_in_queue
            while queue.qsize() >= self.max_queued:
                queue.get_nowait()
                queue.task_done()
                self.dropped_frames += 1
                if self.dropped_frames == 1 or self.dropped_frames % 500 == 0:
                    logger.warning(
                        f"websocket: the pipeline falls behind the client's audio; dropped the oldest "
                        f"({self.dropped_frames} frames so far)"
                    )
        await super().push_audio_frame(frame)


class BoundedWebsocketTransport(FastAPIWebsocketTransport):
    """pipecat's FastAPI WebSocket transport with :class:`BoundedWebsocketInputTransport` as input."""

    def __init__(self, websocket: Any, params: FastAPIWebsocketParams, max_queued: int = 100, **kwargs: Any):
        super().__init__(websocket, params, **kwargs)
        self._input = BoundedWebsocketInputTransport(
            self, self._client, self._params, name=self._input_name, max_queued=max_queued
        )


class SafeProtobufSerializer(ProtobufFrameSerializer):
    """pipecat's protobuf serializer that drops (and logs) what it cannot use instead of raising.

    pipecat's own receive loop ends the session on the first exception from ``deserialize``;
    here a malformed, oversized or nonsensical message is dropped and counted, and the session
    goes on. Audio at another rate than ``sample_rate`` is resampled (pipecat's input transport
    passes audio on at whatever rate it is labelled, and the VAD would hear it too fast or slow).
    """

    def __init__(
        self, max_message_bytes: int = 262144, sample_rate: int = 16000, pacer: AudioPacer | None = None
    ):
        super().__init__()
        self._max = max_message_bytes
        self._rate = sample_rate
        self.pacer = pacer
        # Stateful (no clicks at packet edges), so one per input rate: a new one when it changes.
        self._resampler = create_stream_resampler()
        self._resampler_rate: int | None = None
        self.dropped = 0

    def _drop(self, why: str) -> None:
        self.dropped += 1
        # A hostile client could send thousands: log the first few at warning level only.
        log = logger.warning if self.dropped <= 5 else logger.debug
        log(f"websocket: dropped a client message ({why})")

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if self.pacer is not None and self.pacer.flooded:
            return None  # being disconnected for flooding: not worth a parse
        if isinstance(data, str):
            self._drop("text message; the protocol is binary protobuf")
            return None
        if len(data) > self._max:
            self._drop(f"{len(data)} bytes, over the {self._max}-byte limit")
            return None
        try:
            # Checked here first: pipecat logs every frame it cannot use at error level, and a
            # client sending thousands would flood the server's log.
            proto = frame_protos.Frame.FromString(data)
            kind = proto.WhichOneof("frame")
            if kind not in self.DESERIALIZABLE_FIELDS:
                self._drop("not a frame the bot takes")
                return None
            if kind == "message":
                json.loads(proto.message.data)
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
            if self.pacer is not None and not self.pacer.take(
                len(frame.audio) / (2 * channels * frame.sample_rate)
            ):
                return None  # over real-time pace: counted and logged by the pacer
            if channels == 1 and frame.sample_rate == self._rate:
                return frame
            pcm = frame.audio
            if channels == 2:  # the pipeline hears mono
                pcm = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2).mean(axis=1).astype("<i2").tobytes()
            if frame.sample_rate != self._rate:
                if frame.sample_rate != self._resampler_rate:
                    self._resampler = create_stream_resampler()
                    self._resampler_rate = frame.sample_rate
                try:
                    pcm = await self._resampler.resample(pcm, frame.sample_rate, self._rate)
                except Exception as e:  # never let one message end the session
                    self._drop(f"audio could not be resampled: {e.__class__.__name__}")
                    return None
                if not pcm:  # the resampler holds a few samples back at first
                    return None
            return InputAudioRawFrame(pcm, self._rate, 1)
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
        serializer=SafeProtobufSerializer(
            server.max_message_bytes, config.audio.in_sample_rate, AudioPacer(server.max_audio_ahead_secs)
        ),
        session_timeout=math.ceil(server.session_timeout_secs) if server.session_timeout_secs else None,
        allowed_origins=[],
    )
    params.update(overrides)
    return FastAPIWebsocketParams(**params)


def build_websocket_transport(
    config: PipelineConfig, websocket: Any, on_flood: Callable[[], None] | None = None
) -> FastAPIWebsocketTransport:
    """A transport for one accepted FastAPI/Starlette ``WebSocket``, its audio queue bounded.

    The queue holds ``max_audio_ahead_secs`` of 20 ms packets (at least 10): what the pacer lets
    a client run ahead. A flooding client is disconnected; ``on_flood`` is called first (the
    server puts the client's address in its cooldown).
    """
    server = config.transport.server
    params = websocket_params(config)
    pacer = params.serializer.pacer

    def disconnect() -> None:
        if on_flood is not None:
            on_flood()
        asyncio.ensure_future(_close(websocket, WS_CLOSE_FLOOD, "audio sent faster than real time"))

    pacer.flood_secs, pacer.on_flood = server.flood_disconnect_secs, disconnect
    return BoundedWebsocketTransport(
        websocket, params, max_queued=max(10, int(server.max_audio_ahead_secs / 0.02))
    )


async def _close(websocket: Any, code: int, reason: str) -> None:
    try:
        await websocket.close(code, reason)
    except Exception as e:  # already closed
        logger.debug(f"websocket: close: {e}")
