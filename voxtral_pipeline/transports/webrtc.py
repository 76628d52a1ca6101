"""Browser WebRTC transport: pipecat's SmallWebRTC (aiortc), one peer connection per session.

The browser (our page in ``voxtral_pipeline/web/``, pipecat's prebuilt client, or any WebRTC
client) POSTs an SDP offer to the bot's ``/api/offer`` (see :mod:`voxtral_pipeline.server`) and
gets the answer; microphone audio arrives as an Opus track and the bot's voice goes back on one.
Client events (:mod:`voxtral_pipeline.transports.events`) travel on the data channel. No STUN or
TURN server is needed on localhost or a LAN.
"""

from __future__ import annotations

import re

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


#: Audio codecs aiortc (and so SmallWebRTC) can receive.
AUDIO_CODECS = ("opus", "pcmu", "pcma", "g722")


def offer_audio_problem(sdp: str) -> str | None:
    """Why an SDP offer cannot bring the bot a microphone, or None when it can.

    An offer must be an SDP session (``v=0``) with an ``m=audio`` section that is not disabled
    (port 0), sends (not ``recvonly``/``inactive``) and offers a codec aiortc decodes. Anything
    else would start a session that can never hear anyone and hold a slot until it times out.
    """
    if not sdp.lstrip().startswith("v=0"):
        return "not an SDP session description"
    sections = re.split(r"\r?\n(?=m=)", sdp)
    problems = []
    for section in sections[1:]:
        header = section.splitlines()[0].split()
        if not header or header[0] != "m=audio":
            continue
        if len(header) < 4 or header[1] == "0":
            problems.append("its audio section is disabled")
            continue
        directions = re.findall(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", section, re.M)
        if directions and directions[-1] in ("recvonly", "inactive"):
            problems.append(f"its audio is {directions[-1]}: the bot would hear nothing")
            continue
        codecs = {c.lower() for c in re.findall(r"^a=rtpmap:\d+ ([^/\s]+)/", section, re.M)}
        if not codecs & set(AUDIO_CODECS):
            problems.append("no audio codec the bot can decode (opus, PCMU, PCMA, G722)")
            continue
        return None
    return problems[0] if problems else "no audio section (m=audio)"
