"""Tables, plots and the rendering of a run directory's recommendation.

This module reads results and renders them; it never times anything and never builds or opens
an artifact. The recommendation itself is taken by ``workbench.decide`` (which writes
``best.json``); a report of a run nobody decided yet shows ``decide.choose`` on the sweep's own
numbers, and says so. Trials are read from the Optuna storage named in ``run.json`` (so a report built on any machine
of a PostgreSQL sweep sees every trial), baselines from ``baselines/*/metrics.json``. Latency is
only compared between rows measured on the same hardware (fingerprint ``hardware_id``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError, first_line

PARAM_COLUMNS = ["bits", "int8_mode", "sparsity", "prune_structure", "batch_size", "runtime",
                 "provider", "threads"]
# scenario server only (empty in the other scenarios' rows)
SERVER_PARAMS = ["serving_engine", "max_batch_size", "max_queue_delay_ms", "batch_policy", "instances"]
PARAM_COLUMNS += SERVER_PARAMS
METRIC_COLUMNS = ["accuracy", "accuracy_drop", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
                  "latency_p99_ms",
                  "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_cv", "unstable",
                  "throughput_sps", "size_bytes", "size_gzip_bytes", "max_abs_diff",
                  "top1_agreement", "peak_rss_mb", "load_ms", "mae", "rmse",  # mae/rmse: regression
                  # scenario server: the highest rate within the SLO and the figures at that rate
                  "max_qps_at_slo", "latency_p999_ms", "mean_batch_size", "server_cpu_pct",
                  "rejected_requests"]
COLUMNS = (["trial", "kind", "state", "label"] + PARAM_COLUMNS + METRIC_COLUMNS +
           ["speedup_vs_baseline", "speedup_vs_onnx_fp32", "feasible", "pareto", "reason",
            "reused_from", "notebook", "hardware_id"])
# Not in results.csv: what plots, re-measurement and export need from each row.
EXTRA_COLUMNS = ["latency_quantiles_ms", "artifact", "artifact_format", "params_full", "eval_samples"]
SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "latency_p50_ms",
                   "latency_p90_ms", "throughput_sps", "size_bytes", "speedup_vs_baseline",
                   "feasible", "pareto", "reason"]
# A server run's table: the highest QPS within the SLO and the latency at that rate.
SERVER_SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "max_qps_at_slo",
                          "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "mean_batch_size",
                          "size_bytes", "feasible", "pareto", "reason"]


def run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``, completed with the scenario settings of the run's ``experiment.yaml``."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise WorkbenchError(f"{run_dir}: not a run directory (no run.json)")
    info = json.loads(path.read_text())
    snap = Path(run_dir) / "experiment.yaml"
    if snap.exists():
        import yaml

        exp = yaml.safe_load(snap.read_text()) or {}
        for k in ("scenario", "latency_percentile", "latency_budget_ms", "task", "slo_ms", "slo_percentile"):
            if k in exp:
                info.setdefault(k, exp[k])
    info.setdefault("scenario", "single_stream")
    info.setdefault("latency_percentile", 90)
    return info


_run_info = run_info  # bundle.py's name for it


# What a measured row needs to be compared and recommended; a row lacking one is shown, with
# the reason, and is not feasible.
NEEDED = ["batch_size", "latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms",
          "latency_p90_ms", "size_bytes", "accuracy_drop"]
# A server trial's row needs these (its latency is at the chosen rate, with no in-process CI).
SERVER_NEEDED = ["size_bytes", "accuracy_drop", "max_qps_at_slo"]
NUMERIC_PARAMS = ("bits", "sparsity", "batch_size", "threads", "max_batch_size", "max_queue_delay_ms", "instances")


def _number(value: Any, name: str, problems: list[str]) -> float | int | None:
    """``value`` if it is a finite number, else None (noted in ``problems`` unless missing)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    problems.append(f"{name} is {value!r:.40}")
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _row(kind: str, trial: str, state: str, params: dict, metrics: dict | None,
         needed: list[str] | None = None) -> dict[str, Any]:
    """One table row. Whatever a trial recorded (missing keys, wrong types, NaN) gives a row:
    values that are not what they should be are left empty and named in ``reason``, and such a
    measured row is not feasible (so never recommended)."""
    problems: list[str] = []
    if metrics is not None and not isinstance(metrics, dict):
        problems.append(f"metrics are a {type(metrics).__name__}, not a mapping")
        metrics = None
    m = metrics or {}
    recorded = m.get("params")
    p = {**(params if isinstance(params, dict) else {}), **(recorded if isinstance(recorded, dict) else {})}
    row = {"trial": trial, "kind": kind, "state": state, "label": _text(m.get("label")) or ""}
    row.update({k: _number(p.get(k), k, problems) if k in NUMERIC_PARAMS else _text(p.get(k))
                for k in PARAM_COLUMNS})
    if p.get("bits") != 8:
        row["int8_mode"] = None
    if not p.get("sparsity"):
        row["prune_structure"] = None
    from workbench import parameters

    for k in SERVER_PARAMS:  # empty where it does not apply (not server; kserve; a batch of one)
        if not parameters.applies(k, p):
            row[k] = None
    row.update({k: _number(m.get(k), k, problems) for k in METRIC_COLUMNS if k != "unstable"})
    row["unstable"] = m.get("unstable") if isinstance(m.get("unstable"), bool) else None
    row["feasible"] = m.get("feasible") if isinstance(m.get("feasible"), bool) else None
    if m.get("feasible") is not None and row["feasible"] is None:
        problems.append(f"feasible is {m.get('feasible')!r:.40}")
    row["reason"] = _text(m.get("reason"))
    row["reused_from"] = m.get("reused_from") if isinstance(m.get("reused_from"), (int, str)) else None
    row["notebook"] = _text(m.get("notebook"))
    fp = m.get("fingerprint")
    row["hardware_id"] = _text(fp.get("hardware_id")) if isinstance(fp, dict) else None
    q = m.get("latency_quantiles_ms")
    row["latency_quantiles_ms"] = q if isinstance(q, dict) and all(
        _number(v, "quantile", []) is not None for v in q.values()) else None
    row["artifact"] = _text(m.get("artifact"))
    row["artifact_format"] = _text(m.get("artifact_format"))
    row["params_full"] = p or None
    row["eval_samples"] = _number(m.get("eval_samples"), "eval_samples", problems)
    if state in ("COMPLETE", "BASELINE"):
        missing = [k for k in (needed or NEEDED) if row.get(k) is None
                   and not any(pr.startswith(f"{k} is ") for pr in problems)]
        if missing:
            problems.append(f"no {', '.join(missing)}")
    if problems:
        row["feasible"] = False if row["feasible"] is not None or state == "COMPLETE" else None
        row["reason"] = "; ".join(filter(None, [row["reason"], "metrics unusable: " + "; ".join(problems)]))
    return row


def _trial_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from workbench.storage import open_storage

    study = optuna.load_study(study_name=info["study"], storage=open_storage(info["storage"]))
    rows = []
    needed = SERVER_NEEDED if info.get("scenario") == "server" else NEEDED
    needed = needed + [o for o in info.get("objectives", []) if o not in needed]
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING" or "duplicate_of" in t.user_attrs:
            continue  # enqueued and not started, or a skipped repeat of a measured trial
        try:
            rows.append(_trial_row(t, needed))
        except Exception as err:  # noqa: BLE001 - a report never dies on one trial's record
            rows.append({"trial": str(t.number), "kind": "trial", "state": t.state.name, "label": "",
                         "feasible": False if t.state.name == "COMPLETE" else None,
                         "reason": f"unreadable trial record ({type(err).__name__}: {first_line(err)})"})
    return rows


def _trial_row(t, needed: list[str]) -> dict[str, Any]:
    attrs = t.user_attrs
    row = _row("trial", str(t.number), t.state.name, attrs.get("params", t.params), attrs.get("metrics"),
               needed)
    if not row["label"] and isinstance(attrs.get("params"), dict):
        from workbench.params import TrialParams

        try:
            row["label"] = TrialParams.parse(attrs["params"]).describe()
        except WorkbenchError:
            pass
    said = attrs.get("reason") or attrs.get("error")
    if said:
        row["reason"] = "; ".join(filter(None, [str(said), row["reason"]]))
    row["notebook"] = _text(attrs.get("notebook")) or row["notebook"]
    return row


def _baseline_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run_dir / "baselines").glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            rt = m["params"]["runtime"]
            name = f"baseline:{'keras' if rt == 'tensorflow' else 'onnx-fp32'}:b{m['params']['batch_size']}"
            rows.append(_row("baseline", name, "BASELINE", {}, m))
        except Exception as err:  # noqa: BLE001 - shown as a row, not a crash
            rows.append({"trial": f"baseline:{path.parent.name}", "kind": "baseline", "state": "BASELINE",
                         "label": "", "reason": f"unreadable {path.name} ({type(err).__name__}: "
                                                f"{first_line(err)})"})
    return rows


def load_table(run_dir: str | Path, extras: bool = False):
    """All rows of a run (baselines first), with speed-ups, feasibility and the Pareto flag.

    ``extras`` adds :data:`EXTRA_COLUMNS` (latency quantiles, artifact path and format, the full
    trial parameters) for plots, re-measurement and export.
    """
    import pandas as pd

    from workbench import decide

    run_dir = Path(run_dir)
    info = run_info(run_dir)
    df = pd.DataFrame(_baseline_rows(run_dir) + _trial_rows(info), columns=COLUMNS[:-6] +
                      ["feasible", "reason", "reused_from", "notebook", "hardware_id"] + EXTRA_COLUMNS)
    for col in ("accuracy", "mae", "rmse"):  # a regression run has no accuracy (None -> NaN)
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["speedup_vs_baseline"] = _speedup(df, "tensorflow")
    df["speedup_vs_onnx_fp32"] = _speedup(df, "onnxruntime")
    df["pareto"] = decide.pareto_flags(df, info["objectives"], decide.feasible(df, info))
    return df[COLUMNS + EXTRA_COLUMNS] if extras else df[COLUMNS]


def _speedup(df, runtime: str):
    """p50 of the baseline in ``runtime`` at the same batch size and hardware / this row's p50
    (none for a server trial: its p50 is of a request under load, not of an in-process call)."""
    base = df[(df.kind == "baseline") & (df.runtime == runtime)]
    out = []
    for _, r in df.iterrows():
        match = base[(base.batch_size == r.batch_size) & (base.hardware_id == r.hardware_id)]
        ok = len(match) and r.latency_p50_ms and not math.isnan(r.latency_p50_ms or math.nan)
        ok = ok and not _served(r)
        out.append(float(match.latency_p50_ms.iloc[0] / r.latency_p50_ms) if ok else math.nan)
    return out


def _served(r) -> bool:
    """A row measured by a server trial (it has a max_qps_at_slo)."""
    v = r.get("max_qps_at_slo") if isinstance(r, dict) else getattr(r, "max_qps_at_slo", None)
    return v is not None and v == v


def server_run(df) -> bool:
    """A run with server trials (``scenario: server``)."""
    return "max_qps_at_slo" in df and df["max_qps_at_slo"].notna().any()


def _nan(v) -> float:
    """None (a cleaned NaN, e.g. the accuracy of a regression run) as NaN, for formatting."""
    return math.nan if v is None else v


def _markdown_table(df) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(df.columns) + " |\n| " + " | ".join("---" for _ in df.columns) + " |\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n"
                          for row in df.itertuples(index=False))


def _interval(v: list | None, unit: str = "", digits: int = 4) -> str:
    if not v or v[0] is None:
        return "n/a"
    est, lo, hi = v
    ci = f" [95% CI {lo:.{digits}g}-{hi:.{digits}g}]" if lo is not None and hi is not None else ""
    return f"{est:.{digits}g}{unit}{ci}"


def _machine(run_dir: Path) -> list[tuple[str, str]]:
    path = run_dir / "environment.json"
    if not path.exists():
        return [("machine", "unknown (no environment.json)")]
    env = json.loads(path.read_text())
    cpu = env.get("cpu", {})
    vers = env.get("versions", {})
    libs = ", ".join(f"{k} {vers[k]}" for k in ("onnxruntime", "openvino", "tensorflow", "optuna")
                     if vers.get(k))
    return [("host", env.get("host", "?")), ("CPU", f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, "
                                                    f"flags {' '.join(cpu.get('flags', [])) or '-'}"),
            ("platform", f"{env.get('platform', '?')}, Python {env.get('python', '?')}"),
            ("libraries", libs or "-"), ("hardware id", env.get("hardware_id", "?"))]


def _is_regression_value(d: dict) -> bool:
    acc, mae = d.get("accuracy"), d.get("mae")
    return (acc is None or acc != acc) and mae is not None and mae == mae


def quality_text(d: dict) -> str:
    """"accuracy 98.06%" for classification, "MAE 0.0123" for regression."""
    return f"MAE {d['mae']:.4g}" if _is_regression_value(d) else f"accuracy {_nan(d.get('accuracy')):.2f}%"


def _regression_run(df) -> bool:
    """A run whose rows carry MAE and no accuracy (``task: regression``)."""
    return "mae" in df and df["mae"].notna().any() and df["accuracy"].isna().all()


def feasibility_text(info: dict, df) -> str:
    if _regression_run(df):
        return f"feasible means the MAE increase is <= {info['max_accuracy_drop']:g} vs the fp32 model"
    return f"feasible means accuracy drop <= {info['max_accuracy_drop']:g} points vs the fp32 Keras model"


def summary_columns(df) -> list[str]:
    """SUMMARY_COLUMNS (a server run's: SERVER_SUMMARY_COLUMNS), with MAE in place of accuracy
    for a regression run."""
    cols = SERVER_SUMMARY_COLUMNS if server_run(df) else SUMMARY_COLUMNS
    if _regression_run(df):
        return [("mae" if c == "accuracy" else c) for c in cols]
    return cols


def _summary_items(head: dict, best: dict | None) -> list[tuple[str, str]]:
    if not best or best.get("trial") is None:
        return [("recommendation", "no completed feasible trial yet")]
    if best.get("scenario") == "server":
        return _server_summary_items(head, best)
    items = [("recommended", f"trial {best['trial']}: {best['label']}"),
             ("question", best.get("question", "?")),
             ("p50 per batch", f"{_interval(head.get('latency_p50_ms'), ' ms')} at batch {head.get('batch_size')} "
                               "(CI within one measurement)")]
    for name, title in (("keras_fp32", "Keras fp32 (TensorFlow)"), ("onnx_fp32", "ONNX fp32 (onnxruntime)")):
        if f"speedup_vs_{name}" in head:
            b = head[f"baseline_{name}"]
            items.append((f"vs {title}", f"speed-up {_interval(head[f'speedup_vs_{name}'], 'x', 3)}, "
                                         f"size {head[f'size_reduction_vs_{name}']:.2f}x smaller "
                                         f"({b['size_bytes']:,} -> {head['size_bytes']:,} bytes); baseline p50 "
                                         f"{b['latency_p50_ms']:.4g} ms, {quality_text(b)} "
                                         "(CIs within one measurement each, runs minutes apart)"))
    n = head.get("eval_samples")
    if _is_regression_value(head):
        items.append(("quality", f"{quality_text(head)}, MAE increase {_nan(head['accuracy_drop'][0]):.4g} "
                                 "vs the fp32 model"))
    else:
        items.append(("accuracy", f"{_nan(head['accuracy']):.2f}%, drop {_interval(head.get('accuracy_drop'), ' pt', 3)}"
                                  + (f" (paired, {n} eval samples)" if n else "")))
    items.append(("why", best["reason"]))
    items += _interleaved_items(best)
    return items


def _ms(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4g} ms"


def _server_summary_items(head: dict, best: dict) -> list[tuple[str, str]]:
    """A server recommendation: its QPS within the SLO, the latency at that rate, and the
    in-process fp32 baselines as size/accuracy references."""
    items = [("recommended", f"trial {best['trial']}: {best['label']}"),
             ("question", best.get("question", "?")),
             ("max QPS at SLO", f"{_nan(head.get('max_qps_at_slo')):.4g} QPS (achieved, Poisson arrivals; "
                                f"latency at that rate: p50 {_ms(head.get('latency_p50_ms'))}, p99 "
                                f"{_ms(head.get('latency_p99_ms'))}, p99.9 {_ms(head.get('latency_p999_ms'))}; "
                                f"mean batch {_nan(head.get('mean_batch_size')):.3g})")]
    for name, title in (("keras_fp32", "Keras fp32 (TensorFlow)"), ("onnx_fp32", "ONNX fp32 (onnxruntime)")):
        b = head.get(f"baseline_{name}")
        if b:
            items.append((f"vs {title}", f"size {head[f'size_reduction_vs_{name}']:.2f}x smaller "
                                         f"({b['size_bytes']:,} -> {head['size_bytes']:,} bytes), baseline "
                                         f"{quality_text(b)} (in-process baselines: references for size and "
                                         "accuracy; their latency is of one call, not a served request)"))
    if _is_regression_value(head):
        items.append(("quality", f"{quality_text(head)}, MAE increase {_nan(head['accuracy_drop'][0]):.4g}"))
    else:
        items.append(("accuracy", f"{_nan(head.get('accuracy')):.2f}% (scored on the answers served under "
                                  f"load), drop {_nan(head['accuracy_drop'][0]):.3g} pt"))
    items.append(("why", best["reason"]))
    skipped = (best.get("interleaved") or {}).get("skipped")
    if skipped and skipped not in best["reason"]:
        items.append(("re-measurement", skipped))
    return items


def _interleaved_items(best: dict) -> list[tuple[str, str]]:
    """The re-measurement behind the decision: per-candidate values and paired ratios, with
    CIs across rounds."""
    inter = best.get("interleaved") or {}
    if "rounds" not in inter:
        return []
    stat = inter.get("statistic", best.get("primary_metric", "?"))
    from workbench.decide import processes_text

    where = processes_text(inter) + (" (more rounds: undecided)" if inter.get("processes", 1) > 1 else "")
    items = [("re-measurement", f"{inter['n_rounds']} interleaved rounds in {where}, rotating "
                                f"order, {inter.get('slot_seconds', '?')} s per candidate per round; "
                                f"statistic {stat}; hardware {inter.get('hardware_id', '?')}")]
    gm = inter.get("geomean", {})
    for t, vals in inter["rounds"].items():
        r = inter.get("ratios", {}).get(t)
        ratio = (f"; ratio to trial {r['vs']} {r['ratio']:.3f} [95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}, "
                 "across rounds]" if r else " (leader)" if t == inter.get("leader") else "")
        items.append((f"trial {t}", f"{stat} geometric mean {gm.get(t, float('nan')):.4g} over rounds "
                                    f"({', '.join(f'{v:.4g}' for v in vals)}){ratio}"))
    return items


def build(run_dir: str | Path, progress: bool = False) -> dict[str, Path]:
    """Write results.csv, report.md, report.html and the plots into ``run_dir``.

    Renders the decision in ``best.json`` (``workbench.decide.decide`` writes it). When there is
    none for the current table yet, ``decide.choose`` runs on the sweep's own numbers (no
    re-measurement: the report never times) and ``best.json`` is written with that.
    """
    from workbench import decide, plots

    run_dir = Path(run_dir)
    info = run_info(run_dir)
    full = load_table(run_dir, extras=True)
    df = full[COLUMNS]
    paths = {name: run_dir / name for name in ("results.csv", "report.md", "report.html", "best.json")}
    df.to_csv(paths["results.csv"], index=False)
    best = decide.load_or_choose(run_dir, full, info)
    if not paths["best.json"].exists() or best.get("table") is None:
        best["table"] = decide.table_key(full)
        paths["best.json"].write_text(json.dumps(best, indent=2))
    head = best.get("summary") or {}
    best = best if best.get("trial") is not None else None
    images = plots.draw_all(full, run_dir, info["objectives"], info["max_accuracy_drop"])
    if server_run(full):  # the in-process latency plots do not describe served trials
        images = {k: v for k, v in images.items() if k not in SERVER_SKIPPED_PLOTS}
        images.update(_serving_plots(full, run_dir, info, best))
    paths.update({name.removesuffix(".png"): p for name, p in images.items()})
    paths["report.md"].write_text(_markdown(info, df, best, head))
    paths["report.html"].write_text(_html(info, run_dir, df, best, head, images))
    return paths


# Monitor time series drawn per report: the recommended trial's first, then others.
MAX_TIMESERIES = 6
# In-process latency plots left out of a server run's report (its latencies are under load).
SERVER_SKIPPED_PLOTS = ("pareto.png", "latency_batch.png", "latency_dist.png")


def _serving_plots(full, run_dir: Path, info: dict, best: dict | None) -> dict[str, Path]:
    """Latency vs offered load per configuration, throughput vs p99, and the monitor time
    series, from each completed server trial's metrics.json and monitor.csv (beside its
    notebook)."""
    from workbench.serve import plots as splots

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
    from workbench import plots

    plots.qps_pareto(full, run_dir / "serve_pareto.png", info["max_accuracy_drop"])
    out = {"serve_pareto.png": run_dir / "serve_pareto.png",
           "serve_latency_load.png": splots.latency_vs_load(trials, run_dir / "serve_latency_load.png",
                                                             info.get("slo_ms")),
           "serve_throughput_p99.png": splots.throughput_vs_p99(trials, run_dir / "serve_throughput_p99.png")}
    chosen = str(best["trial"]) if best else None
    monitors.sort(key=lambda tm: tm[0] != chosen)
    for t, csv_path in monitors[:MAX_TIMESERIES]:
        out[f"serve_monitor_{t}.png"] = splots.timeseries(csv_path, run_dir / f"serve_monitor_{t}.png")
    return out


def serving_titles(images: dict[str, Path]) -> list[tuple[str, str]]:
    """(image name, title) of the serving figures in ``images``."""
    titles = [("serve_pareto.png", "Accuracy vs max QPS at the SLO (Pareto front)"),
              ("serve_latency_load.png", "Latency at the SLO percentile vs offered load, per configuration"),
              ("serve_throughput_p99.png", "Achieved throughput vs p99, every measured rate")]
    titles += [(n, f"Monitor of trial {n.removeprefix('serve_monitor_').removesuffix('.png')} (1 Hz, shared "
                   "time axis)") for n in images if n.startswith("serve_monitor_")]
    return [(n, t) for n, t in titles if n in images]


def _intro(info: dict, df) -> str:
    from workbench import decide

    counts = df[df.kind == "trial"].state.value_counts().to_dict()
    reused = int(df.reused_from.notna().sum()) if "reused_from" in df else 0
    if server_run(df):
        return (f"Question: {decide.question(info)}. "
                "Trials: " + (", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "none") +
                f". Objectives: {', '.join(info['objectives'])}; {feasibility_text(info, df)}, and some "
                "offered rate met the SLO. Each trial served its configuration and ramped an open-loop "
                "Poisson load (latency from the scheduled send); max_qps_at_slo is the achieved rate at "
                "the highest offered rate whose percentile was within the SLO with < 0.1% errors, and "
                "the latency columns are at that rate. Baselines are in-process (batch 1): references "
                "for size and accuracy.")
    return (f"Question: {decide.question(info)}. "
            "Trials: " + (", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "none") +
            (f" ({reused} reused an identical measurement)" if reused else "") +
            f". Objectives: {', '.join(info['objectives'])}; {feasibility_text(info, df)}. "
            "Latency is per batch; p50 CIs in the tables are bootstrap 95% CIs within one "
            "measurement (one process, one stretch of time); the decision rests on ratios "
            "across interleaved rounds.")


def _html(info: dict, run_dir: Path, df, best: dict | None, head: dict, images: dict[str, Path]) -> str:
    from workbench import html, plots

    intro = f"<p>{html.esc(_intro(info, df))}</p>"
    cls = "rec tie" if best and best.get("tie") else "rec"
    base = df[df.kind == "baseline"][["trial", summary_columns(df)[3], "latency_p50_ms", "latency_p50_ci_low_ms",
                                      "latency_p50_ci_high_ms", "latency_p90_ms", "size_bytes"]]
    figs = "".join(html.image(images[name], title) for name, title in plots.PLOTS + serving_titles(images)
                   if name in images)
    sections = [
        ("", intro),
        ("Recommendation", f"<div class='{cls}'>{html.definition_list(_summary_items(head, best))}</div>"),
        ("Machine", html.definition_list(_machine(run_dir))),
        ("Baselines", html.table(base)),
        ("Plots", f"<div class='plots'>{figs}</div>"),
        ("All trials (click a header to sort)", html.table(df, best["trial"] if best else None, "all-trials")),
    ]
    return html.page(f"{info['experiment']} / {info['study']}", sections)


def _markdown(info: dict, df, best: dict | None, head: dict | None = None) -> str:
    lines = [f"# {info['experiment']} / {info['study']}", "", _intro(info, df), ""]
    if best and best.get("scenario") == "server":
        r = best["row"]
        lines += ["## Recommendation", "",
                  f"**{best.get('question', '')}: trial {best['trial']}: {best['label']}**: "
                  f"{_nan(r.get('max_qps_at_slo')):.4g} QPS within the SLO (p50 {_ms(r.get('latency_p50_ms'))}, "
                  f"p99 {_ms(r.get('latency_p99_ms'))} at that rate), {quality_text(r)} "
                  f"(drop {_nan(r['accuracy_drop']):.3g}), {r['size_bytes']:,} bytes.", ""]
        lines += [f"- {k}: {v}" for k, v in _summary_items(head or {}, best)[2:]] + [""]
    elif best:
        r = best["row"]
        lines += ["## Recommendation", "",
                  f"**{best.get('question', '')}: trial {best['trial']}: {best['label']}**: {quality_text(r)} "
                  f"(drop {_nan(r['accuracy_drop']):.3g}), p50 {r['latency_p50_ms']:.4f} ms "
                  f"[95% CI within one measurement {r['latency_p50_ci_low_ms']:.4f}-{r['latency_p50_ci_high_ms']:.4f}], "
                  f"p90 {r['latency_p90_ms']:.4f} ms per batch of {r['batch_size']}, "
                  f"{r['throughput_sps']:.4g} samples/s, {r['size_bytes']:,} bytes, "
                  f"speed-up vs Keras {r['speedup_vs_baseline'] or float('nan'):.2f}x.",
                  ""]
        lines += [f"- {k}: {v}" for k, v in _summary_items(head or {}, best)[3:]] + [""]
    else:
        lines += ["## Recommendation", "", "No completed feasible trial yet.", ""]
    lines += ["## Trials", "", _markdown_table(df[summary_columns(df)]), "",
              "## All columns", "",
              "The same table as `results.csv` (CIs within one measurement, CV, `unstable`, agreement, "
              "memory, load time, notebooks, `reused_from`). Plots and a sortable version: `report.html`.", "",
              _markdown_table(df[COLUMNS]), ""]
    return "\n".join(lines)


def latest_run_dir(runs_dir: str | Path) -> Path:
    """The most recently modified run directory under ``runs_dir``."""
    runs = sorted(Path(runs_dir).glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise WorkbenchError(f"{runs_dir}: no run directories (run a sweep first)")
    return runs[-1].parent
