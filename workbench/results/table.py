"""The results table of a run: one row per trial (from the study's storage) and per baseline.

Trials are read from the Optuna storage named in ``run.json`` (so a table built on any machine
of a PostgreSQL sweep sees every trial), baselines from ``baselines/*/metrics.json``. Whatever a
trial recorded gives a row: values that are not what they should be are left empty and named
in ``reason``, and such a row is not feasible. Latency is only compared between rows measured
on the same hardware (fingerprint ``hardware_id``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from workbench.config import parameters
from workbench.config.params import TrialParams
from workbench.core.errors import WorkbenchError, first_line
from workbench.results.pareto import feasible, pareto_flags
from workbench.results.rundir import run_info
from workbench.results.storage import open_storage

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


# scenario server: whether the load run the row's figures rest on measured the server (late
# sends, a saturated client or failed requests make it invalid: workbench.serve.load), and why not
LOAD_COLUMNS = ["load_valid", "load_invalid_reason"]


COLUMNS = (["trial", "kind", "state", "label"] + PARAM_COLUMNS + METRIC_COLUMNS + LOAD_COLUMNS +
           ["speedup_vs_baseline", "speedup_vs_onnx_fp32", "feasible", "pareto", "float_nodes", "reason",
            "reused_from", "notebook", "hardware_id"])


# Not in results.csv: what plots, re-measurement and export need from each row.
EXTRA_COLUMNS = ["latency_quantiles_ms", "artifact", "artifact_format", "params_full", "eval_samples"]


SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "latency_p50_ms",
                   "latency_p90_ms", "throughput_sps", "size_bytes", "speedup_vs_baseline",
                   "feasible", "pareto", "reason"]


# A server run's table: the highest QPS within the SLO and the latency at that rate.
SERVER_SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "max_qps_at_slo",
                          "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "mean_batch_size",
                          "size_bytes", "load_valid", "feasible", "pareto", "reason"]


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


def make_row(kind: str, trial: str, state: str, params: dict, metrics: dict | None,
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
    for k in SERVER_PARAMS:  # empty where it does not apply (not server; kserve; a batch of one)
        if not parameters.applies(k, p):
            row[k] = None
    row.update({k: _number(m.get(k), k, problems) for k in METRIC_COLUMNS if k != "unstable"})
    row["unstable"] = m.get("unstable") if isinstance(m.get("unstable"), bool) else None
    row["load_valid"] = m.get("load_valid") if isinstance(m.get("load_valid"), bool) else None
    row["load_invalid_reason"] = ((_text(m.get("load_invalid_reason")) or "not recorded by the trial")
                                  if row["load_valid"] is False else None)
    row["feasible"] = m.get("feasible") if isinstance(m.get("feasible"), bool) else None
    if m.get("feasible") is not None and row["feasible"] is None:
        problems.append(f"feasible is {m.get('feasible')!r:.40}")
    row["reason"] = _text(m.get("reason"))
    row["float_nodes"] = _text(m.get("float_nodes"))  # int8's fallback: nodes kept float, why
    row["reused_from"] = m.get("reused_from") if isinstance(m.get("reused_from"), (int, str)) else None
    row["notebook"] = _text(m.get("notebook"))
    fp = m.get("fingerprint")
    row["hardware_id"] = _text(fp.get("hardware_id")) if isinstance(fp, dict) else None
    q = m.get("latency_quantiles_ms")
    row["latency_quantiles_ms"] = q if isinstance(q, list) and q and all(  # as measure.timing writes it
        _number(v, "quantile", []) is not None for v in q) else None
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    row = make_row("trial", str(t.number), t.state.name, attrs.get("params", t.params), attrs.get("metrics"),
               needed)
    if not row["label"] and isinstance(attrs.get("params"), dict):
        try:
            row["label"] = TrialParams.parse(attrs["params"]).describe()
        except WorkbenchError:
            pass
    said = attrs.get("reason") or attrs.get("error") or (
        f"interrupted: {attrs['interrupted']}" if attrs.get("interrupted") else None)
    if said:
        row["reason"] = "; ".join(filter(None, [str(said), row["reason"]]))
    row["notebook"] = _text(attrs.get("notebook")) or row["notebook"]
    return row


def baseline_name(m: dict[str, Any]) -> str:
    """The table's name of a baseline from its metrics, e.g. ``baseline:onnx-fp32:b1``."""
    rt = m["params"]["runtime"]
    return f"baseline:{'keras' if rt == 'tensorflow' else 'onnx-fp32'}:b{m['params']['batch_size']}"


def _baseline_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run_dir / "baselines").glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            rows.append(make_row("baseline", baseline_name(m), "BASELINE", {}, m))
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
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    df = pd.DataFrame(_baseline_rows(run_dir) + _trial_rows(info), columns=COLUMNS[:-7] +
                      ["feasible", "float_nodes", "reason", "reused_from", "notebook", "hardware_id"] + EXTRA_COLUMNS)
    for col in ("accuracy", "mae", "rmse"):  # a regression run has no accuracy (None -> NaN)
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["speedup_vs_baseline"] = _speedup(df, "tensorflow")
    df["speedup_vs_onnx_fp32"] = _speedup(df, "onnxruntime")
    df["pareto"] = pareto_flags(df, info["objectives"], feasible(df, info))
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


def regression_run(df) -> bool:
    """A run whose rows carry MAE and no accuracy (``task: regression``)."""
    return "mae" in df and df["mae"].notna().any() and df["accuracy"].isna().all()


def summary_columns(df) -> list[str]:
    """SUMMARY_COLUMNS (a server run's: SERVER_SUMMARY_COLUMNS), with MAE in place of accuracy
    for a regression run, and the speed-up against the fp32 ONNX model in place of the one
    against Keras for a model that has no Keras baseline (an ONNX-only model: its column would
    be empty)."""
    cols = SERVER_SUMMARY_COLUMNS if server_run(df) else SUMMARY_COLUMNS
    if regression_run(df):
        cols = [("mae" if c == "accuracy" else c) for c in cols]
    if "speedup_vs_baseline" in df and df["speedup_vs_baseline"].isna().all():
        cols = [("speedup_vs_onnx_fp32" if c == "speedup_vs_baseline" else c) for c in cols]
    return cols


def trial_metrics(run_dir: Path, number: str) -> dict[str, Any]:
    """The recorded metrics (and full parameters) of completed trial ``number`` of a run, or
    of its baseline named ``number`` (``baseline:onnx-fp32:b1``: best.json may keep one)."""
    if str(number).startswith("baseline:"):
        for path in sorted((Path(run_dir) / "baselines").glob("*/metrics.json")):
            m = json.loads(path.read_text())
            if baseline_name(m) == str(number):
                return m
        raise WorkbenchError(f"{run_dir}: no baseline {number} in {Path(run_dir) / 'baselines'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = run_info(run_dir)
    study = optuna.load_study(study_name=info["study"], storage=open_storage(info["storage"]))
    for t in study.get_trials(deepcopy=False):
        if str(t.number) == str(number):
            if t.state.name != "COMPLETE" or "metrics" not in t.user_attrs:
                raise WorkbenchError(f"{run_dir}: trial {number} is {t.state.name}, not a completed trial")
            return {**t.user_attrs["metrics"], "params": {**t.user_attrs.get("params", {}),
                                                          **t.user_attrs["metrics"].get("params", {})}}
    raise WorkbenchError(f"{run_dir}: no trial {number} in study {info['study']}")
