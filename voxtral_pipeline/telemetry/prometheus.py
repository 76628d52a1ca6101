"""Prometheus histograms of every turn's latency marks and stage times, in milliseconds.

One set of histograms per process, shared by every session's metrics stage: the bot server
serves them at ``/metrics`` (``metrics.prometheus = true``). Milliseconds rather than
Prometheus' customary seconds, so the buckets read like the rest of our numbers.
"""

from __future__ import annotations

import math
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from voxtral_pipeline.telemetry.fields import LATENCY_FIELDS, STAGE_FIELDS

#: Content type of :meth:`TurnHistograms.render`'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST


class TurnHistograms:
    """``voxtral_pipeline_latency_ms{mark}``, ``..._stage_ms{stage}``, ``..._barge_in_ms``, a turn counter."""

    _shared: TurnHistograms | None = None
    _lock = threading.Lock()

    def __init__(self, buckets_ms: list[float], registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        buckets = sorted({float(b) for b in buckets_ms if b > 0}) or [1000.0]
        self.marks = Histogram(
            "voxtral_pipeline_latency_ms",
            "Per turn: milliseconds from the real end of user speech to each mark.",
            ["mark"],
            buckets=buckets,
            registry=self.registry,
        )
        self.stages = Histogram(
            "voxtral_pipeline_stage_ms",
            "Per turn: milliseconds each stage spent on the way to the first bot audio.",
            ["stage"],
            buckets=buckets,
            registry=self.registry,
        )
        self.barge_in = Histogram(
            "voxtral_pipeline_barge_in_ms",
            "Per interrupted turn: milliseconds from the onset of the user's speech to the bot's silence.",
            buckets=buckets,
            registry=self.registry,
        )
        self.turns = Counter(
            "voxtral_pipeline_turns",
            "User turns closed by the metrics stage.",
            ["interrupted"],
            registry=self.registry,
        )

    @classmethod
    def shared(cls, buckets_ms: list[float]) -> TurnHistograms:
        """The process's histograms (created by the first caller, whose buckets win)."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls(buckets_ms)
            return cls._shared

    def observe(
        self, figures: dict[str, float | None], interrupted: bool, barge_in_ms: float | None = None
    ) -> None:
        """Add one turn's figures; missing ones (None) are left out."""
        self.turns.labels(interrupted=str(interrupted).lower()).inc()
        if barge_in_ms is not None and math.isfinite(barge_in_ms):
            self.barge_in.observe(barge_in_ms)
        for names, histogram, label in (
            (LATENCY_FIELDS, self.marks, "mark"),
            (STAGE_FIELDS, self.stages, "stage"),
        ):
            for name in names:
                value = figures.get(name)
                if value is not None and math.isfinite(value):
                    histogram.labels(**{label: name.removesuffix("_ms")}).observe(value)

    def render(self) -> bytes:
        """The text exposition format, for a ``/metrics`` response."""
        return generate_latest(self.registry)
