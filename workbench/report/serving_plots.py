"""The server scenario's figures, for the report and ``notebooks/serving.ipynb``.

Each takes what server trials record (``metrics["points"]``: every offered rate a trial tried,
and ``monitor.csv``) and saves one PNG; like :mod:`workbench.report.plots` they never raise on empty
input (the figure says so), so a report of a half-finished sweep still renders.

* :func:`latency_vs_load`: the SLO percentile against offered QPS, one line per configuration,
  the SLO as a horizontal line (where each line crosses it is its ``max_qps_at_slo``);
* :func:`throughput_vs_p99`: achieved QPS against p99 for every point of every configuration;
* :func:`timeseries`: monitor.csv columns stacked on one shared time axis.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from workbench.report.plots import DPI, empty, pyplot, save_figure

TIMESERIES = ("offered_qps", "answered_qps", "p99_ms", "server_cpu_pct", "server_rss_mb", "queue_depth",
              "batch_mean", "accuracy")


def latency_vs_load(trials: Mapping[str, Mapping[str, Any]], path: Path, slo_ms: float | None = None) -> Path:
    """``trials``: label -> server-trial metrics. The SLO percentile of each point vs offered QPS."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    drawn = False
    for label, m in trials.items():
        pts = sorted((p for p in m.get("points") or [] if p.get("answered")), key=lambda p: p["offered_qps"])
        if pts:
            ax.plot([p["offered_qps"] for p in pts], [p["slo_value_ms"] for p in pts], "o-", label=label, ms=4)
            drawn = True
        slo_ms = slo_ms or (m.get("params") or {}).get("slo_ms")
    if not drawn:
        empty(ax, "no server trials with measured points")
    else:
        if slo_ms:
            ax.axhline(slo_ms, color="k", ls="--", lw=1, label=f"SLO {slo_ms:g} ms")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("offered QPS (Poisson)")
    ax.set_ylabel("latency at the SLO percentile (ms)")
    ax.set_title("Latency vs offered load")
    save_figure(fig, path)
    return path


def throughput_vs_p99(trials: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Achieved QPS against p99 for every point each configuration was measured at."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    drawn = False
    for label, m in trials.items():
        pts = [p for p in m.get("points") or [] if p.get("answered")]
        if pts:
            ax.scatter([p["p99_ms"] for p in pts], [p["achieved_qps"] for p in pts], label=label, s=14)
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    else:
        empty(ax, "no server trials with measured points")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("achieved QPS")
    ax.set_title("Throughput vs p99")
    save_figure(fig, path)
    return path


def read_monitor(path: Path) -> dict[str, list[float]]:
    """monitor.csv as columns of floats (blank cells: NaN)."""
    cols: dict[str, list[float]] = {}
    if not Path(path).exists():
        return cols
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
    return cols


def timeseries(monitor_csv: Path, path: Path, columns: tuple[str, ...] = TIMESERIES) -> Path:
    """The 1 Hz monitor of one trial, one panel per column, on a shared time axis."""
    plt = pyplot()
    cols = read_monitor(monitor_csv)
    shown = [c for c in columns if c in cols]
    if not cols.get("t_s") or not shown:
        fig, ax = plt.subplots(figsize=(7, 2), dpi=DPI)
        empty(ax, f"no monitor samples in {Path(monitor_csv).name}")
        save_figure(fig, path)
        return path
    fig, axes = plt.subplots(len(shown), 1, sharex=True, figsize=(7, 1.2 * len(shown) + 0.6), dpi=DPI)
    for ax, c in zip(axes if len(shown) > 1 else [axes], shown):
        ax.plot(cols["t_s"], cols[c], ".-", ms=3, lw=1)
        ax.set_ylabel(c, rotation=0, ha="right", fontsize=8)
    (axes[-1] if len(shown) > 1 else axes).set_xlabel("seconds since the server was ready")
    fig.suptitle("Server trial monitor (1 Hz)")
    save_figure(fig, path)
    return path
