"""A 1 Hz sampler of a served trial, written to ``monitor.csv``.

Each row: seconds since start, offered rate, server CPU % (the server's process group: the
server and its instance processes; 100 = one core), resident memory (MiB), queue depth and
pending requests (from the server's /metrics), mean batch size over the last second, answered
QPS, the p99 over the last second of answers, and the accuracy of the answers so far. The
report and ``notebooks/serving.ipynb`` plot these on one time axis.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("t_s", "offered_qps", "server_cpu_pct", "server_rss_mb", "queue_depth", "pending", "batch_mean",
           "answered_qps", "p99_ms", "accuracy")


def _tree(pid: int):
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (live ones)."""
    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # noqa: BLE001 - a child can exit between listing and reading
            pass
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001
            pass
    return total / 2**20


class Monitor:
    """Samples every ``period`` s in a thread; ``load`` (a :class:`workbench.serve.load.Recorder`) and
    ``offered`` are swapped by the caller as the load changes."""

    def __init__(self, path: str | Path, pid: int, metrics: Any = None, period: float = 1.0):
        self.path, self.pid, self.metrics, self.period = Path(path), pid, metrics, period
        self.load = None
        self.offered: float = 0.0
        self.peak_rss_mb = 0.0
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitor")

    def start(self) -> "Monitor":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS)
            writer.writeheader()
            last_cpu, last_t = cpu_seconds(self.pid), time.perf_counter()
            last_batch = self._batch_counts()
            while not self._stop.wait(self.period):
                now = time.perf_counter()
                cpu = cpu_seconds(self.pid)
                rss = rss_mb(self.pid)
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
                m = self._scrape()
                batch = self._batch_counts(m)
                n = batch[1] - last_batch[1]
                row = {"t_s": round(now - self._t0, 3), "offered_qps": self.offered,
                       "server_cpu_pct": round(100.0 * (cpu - last_cpu) / (now - last_t), 1),
                       "server_rss_mb": round(rss, 1),
                       "queue_depth": m.get("workbench_queue_depth", ""), "pending": m.get("workbench_pending_requests", ""),
                       "batch_mean": round((batch[0] - last_batch[0]) / n, 3) if n > 0 else "",
                       **self._latency(now)}
                self.rows.append(row)
                writer.writerow(row)
                fh.flush()
                last_cpu, last_t, last_batch = cpu, now, batch

    def _scrape(self) -> dict[str, float]:
        return self.metrics() if self.metrics else {}

    def _batch_counts(self, m: dict[str, float] | None = None) -> tuple[float, float]:
        m = self._scrape() if m is None else m
        return m.get("workbench_batch_size_sum", 0.0), m.get("workbench_batch_size_count", 0.0)

    def _latency(self, now: float) -> dict[str, Any]:
        rec = self.load
        if rec is None:
            return {"answered_qps": "", "p99_ms": "", "accuracy": ""}
        n = len(rec.done_at)
        done = np.asarray(rec.done_at[:n])
        lat = np.asarray(rec.latency_s[:n])[done >= now - self.period] * 1e3
        try:
            acc = rec.accuracy()
        except RuntimeError:  # the load thread added an answer while we read them
            acc = {}
        return {"answered_qps": round(lat.size / self.period, 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else "",
                "accuracy": round(acc["accuracy"], 3) if acc else ""}
