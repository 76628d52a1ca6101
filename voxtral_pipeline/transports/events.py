"""Client events: what a connected client is told about the conversation, over any transport.

An observer on the whole pipeline turns pipeline frames into small JSON messages and sends them
with the output transport's ``send_message`` (a WebRTC data-channel message, a protobuf
``MessageFrame`` on the WebSocket, a Daily app message; the file and local transports drop them).
The browser page draws the conversation word by word and each turn's latency waterfall from
these. Every message is a JSON object with a ``type``:

- ``{"type": "user-started-speaking"}`` / ``{"type": "user-stopped-speaking"}``
- ``{"type": "user-turn", "turn": 0, "duration_s": 1.84}``: the utterance handed to Voxtral
- ``{"type": "bot-response-start"}``, ``{"type": "bot-text", "text": " Paris"}`` (one per token),
  ``{"type": "bot-response-end"}``
- ``{"type": "bot-started-speaking"}`` / ``{"type": "bot-stopped-speaking"}``
- ``{"type": "interruption"}``
- ``{"type": "bot-speak", "text": "Sorry, ..."}``: text spoken outside an answer (the apology after
  a turn whose generation failed)
- ``{"type": "error", "fatal": false}``: a stage reported an error (details stay in the server's
  log, not sent to a client); a non-fatal one leaves the session running
- ``{"type": "turn-metrics", "turn": 0, "interrupted": false, "end_of_turn_ms": ..., "ttft_ms": ...,
  "first_chunk_ms": ..., "first_audio_ms": ..., "voice_to_voice_ms": ...}`` (milliseconds from the
  real end of the user's speech; ``null`` where a mark is missing). Sent with ``"final": false``
  as soon as the bot stops speaking (from the metrics stage's open turn), then with
  ``"final": true`` when the metrics stage closes the turn; a client keeps the latest per turn.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputTransportMessageUrgentFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_transport import BaseTransport

from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.processors.metrics import LATENCY_FIELDS, MetricsStage, VoiceTurnMetricsData

_SIMPLE = {
    UserStartedSpeakingFrame: "user-started-speaking",
    UserStoppedSpeakingFrame: "user-stopped-speaking",
    LLMFullResponseStartFrame: "bot-response-start",
    LLMFullResponseEndFrame: "bot-response-end",
    BotStartedSpeakingFrame: "bot-started-speaking",
    BotStoppedSpeakingFrame: "bot-stopped-speaking",
    InterruptionFrame: "interruption",
}


def event_for(frame: Any, turn: int) -> list[dict[str, Any]]:
    """The client messages one pipeline frame gives (none for most frames)."""
    kind = _SIMPLE.get(type(frame))
    if kind is not None:
        return [{"type": kind}]
    if isinstance(frame, LLMTextFrame):
        return [{"type": "bot-text", "text": frame.text}]
    if isinstance(frame, TTSSpeakFrame):
        return [{"type": "bot-speak", "text": frame.text}]
    if isinstance(frame, ErrorFrame):
        return [{"type": "error", "fatal": bool(frame.fatal)}]
    if isinstance(frame, UserUtteranceFrame):
        return [{"type": "user-turn", "turn": turn, "duration_s": round(frame.duration_secs, 3)}]
    if isinstance(frame, MetricsFrame):
        out = []
        for data in frame.data:
            if isinstance(data, VoiceTurnMetricsData):
                msg = {"type": "turn-metrics", "turn": data.turn, "interrupted": data.interrupted}
                msg.update({name: getattr(data, name) for name in LATENCY_FIELDS})
                msg["final"] = True
                out.append(msg)
        return out
    return []


class ClientEventsObserver(BaseObserver):
    """Sends :func:`event_for` messages through a transport's output as frames are first pushed."""

    def __init__(self, transport: BaseTransport, metrics: MetricsStage | None = None):
        super().__init__(observe_every_push=False)
        self._transport = transport
        #: The session's metrics stage: its open turn is reported when the bot stops speaking.
        self.metrics = metrics
        self._turns = 0
        self._sent = 0

    @property
    def sent(self) -> int:
        """Messages sent so far."""
        return self._sent

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        # Broadcast frames (speaking, interruptions) go both ways: tell the client once.
        if data.direction == FrameDirection.UPSTREAM and type(frame) in _SIMPLE:
            return
        messages = event_for(frame, self._turns)
        if isinstance(frame, BotStoppedSpeakingFrame) and self.metrics is not None and self.metrics.turns:
            turn = self.metrics.turns[-1]
            if turn.bot_started_time is not None:
                msg = {"type": "turn-metrics", "turn": turn.index, "interrupted": turn.interrupted}
                msg.update(turn.latencies())
                msg["final"] = False
                messages.append(msg)
        if isinstance(frame, UserUtteranceFrame):
            self._turns += 1
        for message in messages:
            try:
                await self._transport.output().send_message(
                    OutputTransportMessageUrgentFrame(message=message)
                )
                self._sent += 1
            except Exception as e:  # a client that went away must not break the pipeline
                logger.debug(f"client event not sent ({message['type']}): {e}")
