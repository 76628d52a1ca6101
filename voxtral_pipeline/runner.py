"""Our pipeline under pipecat's development runner (``pipecat.runner.run``): ``async def bot(runner_args)``.

pipecat's runner owns the server (``/start``, ``/api/offer``, the prebuilt UI at ``/client``, Daily
rooms, the telephony WebSockets of Twilio, Telnyx, Plivo and Exotel) and calls a bot module's
``bot(runner_args)`` once per session. :func:`run_bot` is that function's body for our pipeline:
pipecat's ``create_transport`` builds the session's transport from our transport parameters, and
the models come from :func:`shared_models`, loaded once per process (a runner session used to load
Kokoro again: 8.6 s each), not once per session.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from loguru import logger

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.server import SharedModels, build_session

#: Telephony providers pipecat's runner takes over its WebSocket (8 kHz calls; no RTVI client).
TELEPHONY = ("twilio", "telnyx", "plivo", "exotel")

_models: dict[tuple, SharedModels] = {}
_models_lock = threading.Lock()


def models_key(config: PipelineConfig) -> tuple:
    """What makes two configs' models the same ones."""
    v, k = config.voxtral, config.kokoro
    return (
        v.model, v.device, v.dtype, getattr(v, "backend", None), v.seed,
        k.model, k.voice, k.device, k.lang_code, getattr(k, "voices_file", None),
    )  # fmt: skip


def shared_models(config: PipelineConfig) -> SharedModels:
    """The process's models for ``config``, loaded on first use (blocking: call it in a thread)."""
    key = models_key(config)
    with _models_lock:
        models = _models.get(key)
        if models is None:
            models = _models[key] = SharedModels.load(config)
        return models


def transport_params(config: PipelineConfig) -> dict[str, Any]:
    """Parameter factories for pipecat's ``create_transport``, one per transport the runner offers."""
    from pipecat.serializers.protobuf import ProtobufFrameSerializer
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

    from voxtral_pipeline.transports import audio_params
    from voxtral_pipeline.transports.webrtc import webrtc_params

    def daily():
        from voxtral_pipeline.transports.daily import daily_params

        return daily_params(config)

    def telephony():
        return FastAPIWebsocketParams(**audio_params(config), add_wav_header=False)

    def websocket():
        return FastAPIWebsocketParams(**audio_params(config), serializer=ProtobufFrameSerializer())

    return {
        "webrtc": lambda: webrtc_params(config),
        "daily": daily,
        "websocket": websocket,
        **{name: telephony for name in TELEPHONY},
    }


def session_config(config: PipelineConfig, runner_args: Any) -> PipelineConfig:
    """``config`` with the transport kind of this runner session (RTVI follows it; phones get none)."""
    from pipecat.runner.types import DailyRunnerArguments, SmallWebRTCRunnerArguments

    if isinstance(runner_args, SmallWebRTCRunnerArguments):
        update: dict[str, Any] = {"kind": "webrtc"}
    elif isinstance(runner_args, DailyRunnerArguments):
        update = {"kind": "daily"}
    else:  # a WebSocket: pipecat's protobuf clients, or a phone call
        phone = getattr(runner_args, "transport_type", None) in TELEPHONY
        update = {"kind": "websocket", "rtvi": config.transport.rtvi and not phone}
    return config.model_copy(update={"transport": config.transport.model_copy(update=update)})


async def run_bot(runner_args: Any, config: PipelineConfig) -> dict[str, Any]:
    """Run one runner session with our pipeline until its client leaves; return the metrics report."""
    from pipecat.runner.utils import create_transport

    transport = await create_transport(runner_args, transport_params(config))
    config = session_config(config, runner_args)
    models = await asyncio.to_thread(shared_models, config)
    voice = build_session(config, transport, models)

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport, _client):
        await voice.worker.cancel(reason="client disconnected")

    logger.info(
        f"runner session {getattr(runner_args, 'session_id', None)} ({config.transport.kind}) started"
    )
    return await voice.run()
