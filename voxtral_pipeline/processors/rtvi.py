"""pipecat's RTVI processor, with a clear refusal of transport messages that are not JSON objects.

pipecat 1.14's ``RTVIProcessor`` calls ``message.get(...)`` on whatever a client sent: a JSON array
or string raises ``AttributeError`` inside the processor (logged as a processor error, and the
client is told ``Error processing frame: 'list' object has no attribute 'get'``). Here such a
message gets the same RTVI ``error`` an invalid RTVI message gets, and nothing else happens.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import InputTransportMessageFrame
from pipecat.processors.frameworks.rtvi import RTVIProcessor


class ObjectsOnlyRTVIProcessor(RTVIProcessor):
    """``RTVIProcessor`` that refuses non-object transport messages with an RTVI ``error``."""

    async def _handle_transport_message(self, frame: InputTransportMessageFrame):
        if not isinstance(frame.message, dict):
            logger.debug(f"{self}: dropped a transport message that is not a JSON object")
            await self.send_error("Invalid RTVI transport message: not a JSON object")
            return
        await super()._handle_transport_message(frame)
