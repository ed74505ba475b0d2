"""What a trial notebook shows of its metrics (it runs inside the trial's kernel)."""

from __future__ import annotations

from html import escape
from typing import Any, Mapping

SHOWN = ("accuracy", "accuracy_drop", "mae", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
         "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_cv", "throughput_sps",
         "size_bytes", "size_gzip_bytes", "max_abs_diff", "top1_agreement", "load_ms", "peak_rss_mb",
         "max_qps_at_slo", "latency_p999_ms", "mean_batch_size", "server_cpu_pct", "rejected_requests")  # server


class Summary:
    """What a trial notebook shows of its metrics: the label and status, then the reason if
    pruned, or a small table (HTML in Jupyter, plain text elsewhere). No pandas: importing it
    would add about 0.5 s to every trial of a sweep."""

    def __init__(self, metrics: Mapping[str, Any]):
        self.metrics = metrics

    def _title(self) -> str:
        m = self.metrics
        return f"{m.get('label', '?')}: {m.get('status', '?')}"

    def _rows(self) -> list[tuple[str, str]]:
        return [(k, f"{self.metrics[k]:.6g}") for k in SHOWN
                if isinstance(self.metrics.get(k), (int, float))]

    def __repr__(self) -> str:
        lines = [self._title()]
        if self.metrics.get("reason"):
            lines.append(f"reason: {self.metrics['reason']}")
        lines += [f"{k:>24}  {v}" for k, v in self._rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        out = [f"<p><b>{escape(self._title())}</b></p>"]
        if self.metrics.get("reason"):
            out.append(f"<p>reason: {escape(str(self.metrics['reason']))}</p>")
        rows = self._rows()
        if rows:
            out.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
                f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>")
        return "".join(out)
