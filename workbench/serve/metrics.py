"""Prometheus metrics of a serving engine (names documented in the README, "Serving").

Durations are in seconds (Prometheus convention). ``process_cpu_seconds_total`` and
``process_resident_memory_bytes`` come from prometheus-client's process collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

NAMES = {
    "workbench_request_duration_seconds": "histogram: arrival of the request to its answer being ready",
    "workbench_queue_duration_seconds": "histogram: time a request waited in the batcher's queue",
    "workbench_compute_duration_seconds": "histogram: one batch's run() on an instance",
    "workbench_batch_size": "histogram: rows per dispatched batch",
    "workbench_requests_success_total": "counter: requests answered 200",
    "workbench_requests_failure_total": "counter{code}: requests answered 400, 503 or 500",
    "workbench_pending_requests": "gauge: requests queued or being computed",
    "workbench_queue_depth": "gauge: requests queued, not yet in a batch",
    "process_cpu_seconds_total": "counter: the server process's CPU time",
    "process_resident_memory_bytes": "gauge: the server process's resident memory",
}


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.request = Histogram("workbench_request_duration_seconds", NAMES["workbench_request_duration_seconds"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("workbench_queue_duration_seconds", NAMES["workbench_queue_duration_seconds"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("workbench_compute_duration_seconds", NAMES["workbench_compute_duration_seconds"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("workbench_batch_size", NAMES["workbench_batch_size"], buckets=BATCH_BUCKETS,
                               registry=r)
        self.success = Counter("workbench_requests_success", NAMES["workbench_requests_success_total"], registry=r)
        self.failure = Counter("workbench_requests_failure", NAMES["workbench_requests_failure_total"], ["code"],
                               registry=r)
        self.pending = Gauge("workbench_pending_requests", NAMES["workbench_pending_requests"], registry=r)
        self.depth = Gauge("workbench_queue_depth", NAMES["workbench_queue_depth"], registry=r)

    def observe_batch(self, batch_rows: int, compute: float, queued: list[float]) -> None:
        self.batch.observe(batch_rows)
        self.compute.observe(compute)
        for q in queued:
            self.queue.observe(q)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse(text: str) -> dict[str, float]:
    """Flat ``{sample name{labels}: value}`` of a /metrics page (for the monitor and tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            le = s.labels.get("le")
            key = s.name + (f"{{{labels}}}" if labels else "") + (f"[le={le}]" if le else "")
            out[key] = s.value
    return out
