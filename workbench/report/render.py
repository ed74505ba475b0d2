"""Render a run directory: results.csv, report.md, report.html and the plots.

Renders only: the recommendation is ``best.json``, written by ``workbench.decision`` before a
report is built; nothing here decides, times or opens an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.report import html, plots, serving_plots
from workbench.report.summary import intro, machine, markdown, summary_items
from workbench.results.best import read_best
from workbench.results.rundir import run_info
from workbench.results.table import COLUMNS, load_table, server_run, summary_columns


def build(run_dir: str | Path, progress: bool = False) -> dict[str, Path]:
    """Write results.csv, report.md, report.html and the plots into ``run_dir``.

    Renders the decision in ``best.json`` as ``workbench.decision`` wrote it; a run nobody
    decided yet (no best.json) is rendered with "not decided yet", and one decided on an
    earlier table (trials finished since) says so. Nothing here decides or writes best.json.
    """
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    full = load_table(run_dir, extras=True)
    df = full[COLUMNS]
    paths = {name: run_dir / name for name in ("results.csv", "report.md", "report.html")}
    df.to_csv(paths["results.csv"], index=False)
    best = read_best(run_dir, full)  # with no trial: the reason there is none
    head = best.get("summary") or {}
    images = plots.draw_all(full, run_dir, info["objectives"], info["max_accuracy_drop"])
    if server_run(full):  # the in-process latency plots do not describe served trials
        images = {k: v for k, v in images.items() if k not in SERVER_SKIPPED_PLOTS}
        images.update(_serving_plots(full, run_dir, info, best.get("trial")))
    paths.update({name.removesuffix(".png"): p for name, p in images.items()})
    paths["report.md"].write_text(markdown(info, df, best, head, run_dir))
    paths["report.html"].write_text(_html(info, run_dir, df, best, head, images))
    return paths


# Monitor time series drawn per report: the recommended trial's first, then others.
MAX_TIMESERIES = 6


# In-process latency plots left out of a server run's report (its latencies are under load).
SERVER_SKIPPED_PLOTS = ("pareto.png", "latency_batch.png", "latency_dist.png")


def _serving_plots(full, run_dir: Path, info: dict, chosen: str | None) -> dict[str, Path]:
    """Latency vs offered load per configuration, throughput vs p99, and the monitor time
    series, from each completed server trial's metrics.json and monitor.csv (beside its
    notebook)."""
    rows = full[(full.kind == "trial") & (full.state == "COMPLETE") & full.notebook.notna()]
    trials: dict[str, dict] = {}
    monitors: list[tuple[str, Path]] = []
    for _, r in rows.iterrows():
        folder = Path(r.notebook).parent
        try:
            m = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if "points" not in m:
            continue
        trials[f"{r.trial}: {r.label}"] = m
        if (folder / "monitor.csv").exists():
            monitors.append((str(r.trial), folder / "monitor.csv"))
    plots.qps_pareto(full, run_dir / "serve_pareto.png", info["max_accuracy_drop"])
    out = {"serve_pareto.png": run_dir / "serve_pareto.png",
           "serve_latency_load.png": serving_plots.latency_vs_load(trials, run_dir / "serve_latency_load.png",
                                                             info.get("slo_ms")),
           "serve_throughput_p99.png": serving_plots.throughput_vs_p99(trials, run_dir / "serve_throughput_p99.png")}
    chosen = None if chosen is None else str(chosen)
    monitors.sort(key=lambda tm: tm[0] != chosen)
    for t, csv_path in monitors[:MAX_TIMESERIES]:
        out[f"serve_monitor_{t}.png"] = serving_plots.timeseries(csv_path, run_dir / f"serve_monitor_{t}.png")
    return out


def serving_titles(images: dict[str, Path]) -> list[tuple[str, str]]:
    """(image name, title) of the serving figures in ``images``."""
    titles = [("serve_pareto.png", "Accuracy vs max QPS at the SLO (Pareto front)"),
              ("serve_latency_load.png", "Latency at the SLO percentile vs offered load, per configuration"),
              ("serve_throughput_p99.png", "Achieved throughput vs p99, every measured rate")]
    titles += [(n, f"Monitor of trial {n.removeprefix('serve_monitor_').removesuffix('.png')} (1 Hz, shared "
                   "time axis)") for n in images if n.startswith("serve_monitor_")]
    return [(n, t) for n, t in titles if n in images]


def _html(info: dict, run_dir: Path, df, best: dict, head: dict, images: dict[str, Path]) -> str:
    text = f"<p>{html.esc(intro(info, df))}</p>"
    cls = "rec tie" if best and best.get("tie") else "rec"
    base = df[df.kind == "baseline"][["trial", summary_columns(df)[3], "latency_p50_ms", "latency_p50_ci_low_ms",
                                      "latency_p50_ci_high_ms", "latency_p90_ms", "size_bytes"]]
    figs = "".join(html.image(images[name], title) for name, title in plots.PLOTS + serving_titles(images)
                   if name in images)
    sections = [
        ("", text),
        ("Recommendation", f"<div class='{cls}'>{html.definition_list(summary_items(head, best, run_dir))}</div>"),
        ("Machine", html.definition_list(machine(run_dir))),
        ("Baselines", html.table(base)),
        ("Plots", f"<div class='plots'>{figs}</div>"),
        ("All trials (click a header to sort)", html.table(df, best["trial"] if best else None, "all-trials")),
    ]
    return html.page(f"{info['experiment']} / {info['study']}", sections)
