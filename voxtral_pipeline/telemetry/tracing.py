"""OpenTelemetry spans for every turn's waterfall, under pipecat's conversation span.

pipecat's ``PipelineWorker(enable_tracing=True)`` opens a ``conversation`` span, a ``turn`` span
per exchange and spans for its services (Kokoro's ``run_tts`` is decorated with ``traced_tts``).
Those spans time the services; ours time the *user's* wait: one ``voice_turn`` span from the real
end of speech to the first bot audio, with one child span per stage (``vad_wait``,
``turn_detect``, ``voxtral_ttft``, ``first_chunk_wait``, ``kokoro_ttfb``, ``output``), each placed
at its real start and end, so a trace viewer shows the same waterfall as the report; an
interrupted answer adds a ``barge_in`` span beside it, from the user's speech onset to the bot's
silence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger
from opentelemetry import trace

if TYPE_CHECKING:
    from pipecat.utils.tracing.tracing_context import TracingContext

    from voxtral_pipeline.config import MetricsConfig
    from voxtral_pipeline.processors.metrics import TurnRecord

TRACER_NAME = "voxtral_pipeline.metrics"
_configured = False


def _ns(t: float) -> int:
    return int(t * 1e9)


class TurnSpans:
    """Writes one closed turn as a ``voice_turn`` span and its stage spans."""

    def __init__(self, context: TracingContext):
        self._context = context
        self._tracer = trace.get_tracer(TRACER_NAME)

    def emit(self, turn: TurnRecord) -> None:
        end = turn.bot_started_time or turn.first_audible_time or turn.first_token_time or turn.turn_end_time
        parent = self._context.get_conversation_context()
        span = self._tracer.start_span("voice_turn", context=parent, start_time=_ns(turn.speech_end_time))
        span.set_attribute("turn.index", turn.index)
        span.set_attribute("turn.interrupted", turn.interrupted)
        if self._context.conversation_id:
            span.set_attribute("conversation.id", self._context.conversation_id)
        for name, value in {**turn.figures(), "barge_in_ms": turn.barge_in_ms}.items():
            if value is not None:
                span.set_attribute(f"latency.{name}", value)
        child_context = trace.set_span_in_context(span)
        kokoro_start = None
        if turn.first_audible_time is not None and turn.tts_ttfb_secs is not None:
            kokoro_start = turn.first_audible_time - turn.tts_ttfb_secs
        for name, start, stop in (
            ("vad_wait", turn.speech_end_time, turn.vad_stop_time),
            ("turn_detect", turn.vad_stop_time, turn.turn_end_time),
            ("voxtral_ttft", turn.inference_start_time, turn.first_token_time),
            ("first_chunk_wait", turn.first_token_time, turn.first_chunk_time),
            ("kokoro_ttfb", kokoro_start, turn.first_audible_time),
            ("output", turn.first_audible_time, turn.bot_started_time),
        ):
            if start is not None and stop is not None:
                child = self._tracer.start_span(name, context=child_context, start_time=_ns(start))
                child.end(end_time=_ns(max(start, stop)))
        span.end(end_time=_ns(max(end, turn.speech_end_time)))
        if turn.barge_in_ms is not None and turn.barge_in_onset_time is not None:
            # After the first audio, so beside the turn's span rather than inside it.
            barge = self._tracer.start_span(
                "barge_in", context=parent, start_time=_ns(turn.barge_in_onset_time)
            )
            barge.set_attribute("turn.index", turn.index)
            barge.end(end_time=_ns(turn.barge_in_onset_time + turn.barge_in_ms / 1000.0))


def configure_tracing(config: MetricsConfig) -> bool:
    """With ``otlp_endpoint``, install pipecat's tracer provider exporting there (once per process).

    Without an endpoint nothing is installed: the application brings its own provider (or spans
    go nowhere, OpenTelemetry's default). Returns whether a provider was installed here.
    """
    global _configured
    if _configured or not config.otlp_endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from pipecat.utils.tracing.setup import setup_tracing

    _configured = setup_tracing(config.service_name, exporter=OTLPSpanExporter(endpoint=config.otlp_endpoint))
    if _configured:
        logger.info(f"tracing: exporting spans to {config.otlp_endpoint}")
    return _configured
