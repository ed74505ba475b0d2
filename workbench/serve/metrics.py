"""Prometheus metrics of a serving engine (names documented in the README, "Serving").

Durations are in seconds (Prometheus convention). ``process_cpu_seconds_total`` and
``process_resident_memory_bytes`` come from prometheus-client's process collector.

The request path counts into plain Python lists and integers, read by a collector when
``/metrics`` is scraped: prometheus-client's own Histogram and Counter take a lock and cost
1.5-2.6 us per call, five of them per request at batch 1, and all of them run on the event
loop's thread anyway (the batcher reports from the loop), so nothing here needs a lock.
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

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


class _Histogram:
    """Counts per bucket (an observation goes to the first bound >= it, Prometheus' ``le``) and a sum."""

    def __init__(self, name: str, bounds: tuple[float, ...]) -> None:
        self.name, self.bounds = name, bounds
        self.counts, self.sum = [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts):
            total += n
            cumulative.append((bound, total))
        return HistogramMetricFamily(self.name, NAMES[self.name], buckets=cumulative, sum_value=self.sum)


class _Collector:
    def __init__(self, metrics: "ServerMetrics") -> None:
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        yield from (h.family() for h in (m.request, m.queue, m.compute, m.batch))
        yield CounterMetricFamily("workbench_requests_success", NAMES["workbench_requests_success_total"],
                                  value=m.success)
        failure = CounterMetricFamily("workbench_requests_failure", NAMES["workbench_requests_failure_total"],
                                      labels=["code"])
        for code, n in sorted(m.failure.items(), key=lambda kv: str(kv[0])):
            failure.add_metric([str(code)], n)
        yield failure


class ServerMetrics:
    """``request``, ``queue``, ``compute``, ``batch``: histograms (``observe``); ``success``: a count,
    ``failure``: counts by status code (``add_failure``); ``pending``, ``depth``: gauges read at scrape."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.request = _Histogram("workbench_request_duration_seconds", LATENCY_BUCKETS)
        self.queue = _Histogram("workbench_queue_duration_seconds", LATENCY_BUCKETS)
        self.compute = _Histogram("workbench_compute_duration_seconds", LATENCY_BUCKETS)
        self.batch = _Histogram("workbench_batch_size", BATCH_BUCKETS)
        self.success = 0
        self.failure: dict[int | str, int] = {}
        r.register(_Collector(self))
        self.pending = Gauge("workbench_pending_requests", NAMES["workbench_pending_requests"], registry=r)
        self.depth = Gauge("workbench_queue_depth", NAMES["workbench_queue_depth"], registry=r)

    def add_failure(self, code: int | str) -> None:
        """One failed request: its HTTP status, or its gRPC status name (``INVALID_ARGUMENT``)."""
        self.failure[code] = self.failure.get(code, 0) + 1

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
