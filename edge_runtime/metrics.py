"""The metrics the edge service exports; the primitives live in :mod:`service_http.metrics`."""

from __future__ import annotations

from service_http.metrics import (  # noqa: F401
    CONTENT_TYPE,
    LATENCY_BUCKETS_S,
    OTHER,
    Counter,
    Gauge,
    Histogram,
    Registry,
    bounded_label,
)


class EdgeMetrics:
    """The named metrics the edge service exports."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.requests = r.counter(
            "edgelesspart_requests_total", "HTTP requests by route and status."
        )
        self.answers = r.counter("edgelesspart_answers_total", "Answered rows by exit and stage.")
        self.offloads = r.counter(
            "edgelesspart_offloads_total", "Cloud calls by outcome (ok, timeout, unavailable, ...)."
        )
        self.offloaded_rows = r.counter(
            "edgelesspart_offloaded_rows_total", "Rows sent to the cloud."
        )
        self.degraded = r.counter(
            "edgelesspart_degraded_answers_total",
            "Rows answered from a local exit after a cloud failure.",
        )
        self.bytes_sent = r.counter(
            "edgelesspart_offload_bytes_sent_total", "Boundary tensor bytes sent to the cloud."
        )
        self.latency = r.histogram(
            "edgelesspart_request_latency_seconds", "Wall time of a request by route."
        )
        self.rejected = r.counter(
            "edgelesspart_rejected_total",
            "Requests refused with 429 by admission control, by reason.",
        )
        self.inflight = r.gauge(
            "edgelesspart_inflight_requests", "Inference requests at work and waiting."
        )
        self.breaker_state = r.gauge(
            "edgelesspart_breaker_state",
            "Cloud circuit breaker: 1 for the current state (closed, open, half-open).",
        )
        self.breaker_transitions = r.counter(
            "edgelesspart_breaker_transitions_total",
            "Circuit breaker state changes since start, by from and to state.",
        )
        self.offload_rejected = r.counter(
            "edgelesspart_offload_rejected_total",
            "Cloud calls refused with a 4xx (401 token, 404 URL, 409 bundle, 413 size...), by "
            "status: a configuration error on the edge or the cloud.",
        )
        self.offload_latency = r.histogram(
            "edgelesspart_offload_latency_seconds", "Wall time of one cloud call."
        )

    def observe_breaker(self, breaker: object) -> None:
        """Copy a circuit breaker's state (gauge) and cumulative transition counts (counter)."""
        state = getattr(breaker, "state", None)
        if state is None:
            return
        for name in ("closed", "open", "half-open"):
            self.breaker_state.set(1.0 if name == state else 0.0, state=name)
        transitions = getattr(breaker, "transitions", None)
        for (old, new), count in (transitions() if callable(transitions) else {}).items():
            self.breaker_transitions.set_total(count, **{"from": old, "to": new})

    def render(self) -> str:
        """Prometheus text of every metric."""
        return self.registry.render()
