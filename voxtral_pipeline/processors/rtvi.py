"""pipecat's RTVI processor, with a clear refusal of transport messages that are not JSON objects.

pipecat 1.14's ``RTVIProcessor`` calls ``message.get(...)`` on whatever a client sent: a JSON array
or string raises ``AttributeError`` inside the processor (logged as a processor error, and the
client is told ``Error processing frame: 'list' object has no attribute 'get'``). Here such a
message gets the same RTVI ``error`` an invalid RTVI message gets, and nothing else happens.
And pipecat logs a WARNING for every message without the RTVI label: a client sending thousands
(tests/test_hostile_input.py's flood) would fill the log, so those are counted and logged at DEBUG.
Pipeline errors reach the client as an RTVI ``error`` without their text (which can carry
exception messages and paths): the details stay in the server's log, as with our own ``error`` event.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import ErrorFrame, InputTransportMessageFrame
from pipecat.processors.frameworks.rtvi import RTVIProcessor
from pipecat.processors.frameworks.rtvi.models import MESSAGE_LABEL

#: Prefix of the errors about a client's own messages: those are sent as they are.
CLIENT_MESSAGE_ERROR = "Invalid RTVI transport message"
#: What a client is told about an error inside the pipeline.
PIPELINE_ERROR = "the bot hit an error (details are in its log)"


class ObjectsOnlyRTVIProcessor(RTVIProcessor):
    """``RTVIProcessor`` that refuses non-object transport messages with an RTVI ``error``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: Client messages that were not RTVI (no ``rtvi-ai`` label, or not a JSON object).
        self.ignored = 0

    async def _handle_transport_message(self, frame: InputTransportMessageFrame):
        if isinstance(frame.message, dict) and frame.message.get("label") != MESSAGE_LABEL:
            self.ignored += 1
            logger.debug(f"{self}: ignored a message that is not RTVI")
            return
        if not isinstance(frame.message, dict):
            self.ignored += 1
            logger.debug(f"{self}: dropped a transport message that is not a JSON object")
            await self.send_error(f"{CLIENT_MESSAGE_ERROR}: not a JSON object")
            return
        await super()._handle_transport_message(frame)

    async def _send_error_frame(self, frame: ErrorFrame):
        if not frame.error.startswith(CLIENT_MESSAGE_ERROR):
            frame = ErrorFrame(error=PIPELINE_ERROR, fatal=frame.fatal)
        await super()._send_error_frame(frame)
