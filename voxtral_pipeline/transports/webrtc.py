"""Browser WebRTC transport: pipecat's SmallWebRTC (aiortc), one peer connection per session.

The browser (our page in ``voxtral_pipeline/web/``, pipecat's prebuilt client, or any WebRTC
client) POSTs an SDP offer to the bot's ``/api/offer`` (see :mod:`voxtral_pipeline.server`) and
gets the answer; microphone audio arrives as an Opus track and the bot's voice goes back on one.
Client events (:mod:`voxtral_pipeline.transports.events`) travel on the data channel. No STUN or
TURN server is needed on localhost or a LAN.
"""

from __future__ import annotations

from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.transports import audio_params


def ice_servers(config: PipelineConfig) -> list[IceServer]:
    """ICE servers from the config (none by default)."""
    return [IceServer(urls=url) for url in config.transport.webrtc.ice_servers]


def webrtc_params(config: PipelineConfig) -> TransportParams:
    """Transport parameters for one browser session: audio both ways, 20 ms output packets."""
    return TransportParams(
        **audio_params(config),
    )


def build_webrtc_transport(
    config: PipelineConfig, connection: SmallWebRTCConnection | None = None
) -> SmallWebRTCTransport:
    """A transport for one peer connection (a fresh, not yet negotiated one when None)."""
    connection = connection or SmallWebRTCConnection(ice_servers=ice_servers(config))
    return SmallWebRTCTransport(webrtc_connection=connection, params=webrtc_params(config))
