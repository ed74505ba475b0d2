"""``best.json``: the recommendation of a run directory, written here and nowhere else.

:func:`decide` reads the run's table (``workbench.results``), chooses
(``workbench.decision.choose``), re-measures the leaders together when the scenario allows it
(``workbench.decision.remeasure``), and writes the choice with its reason and the headline
figures against the baselines. Reports and exports only read the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.errors import WorkbenchError
from workbench.core.scenarios import question, scenario
from workbench.decision.choose import candidates, choose
from workbench.decision.remeasure import remeasure_leaders
from workbench.results.best import BEST_FILE, clean, clean_json, table_key
from workbench.results.rundir import run_info
from workbench.results.table import PARAM_COLUMNS, load_table


def decide(run_dir: str | Path, remeasure: bool = True, log=None, df=None) -> dict[str, Any]:
    """Choose the recommendation of a run directory and write ``best.json``; returns it."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    df = load_table(run_dir, extras=True) if df is None else df
    interleaved = None
    sc = scenario(info.get("scenario", "single_stream"))
    if not sc.remeasure:  # e.g. server: said in best.json
        interleaved, remeasure = {"skipped": sc.remeasure_why}, False
    best = choose(df, info, interleaved)
    if best and remeasure and len(best["candidates"]) + bool(best.get("baseline")) > 1:
        cands, _, col = candidates(df, info)
        lead = cands[cands.trial.astype(str).isin(best["candidates"])]
        if best.get("baseline"):  # timed with the leaders: "faster than doing nothing" is paired too
            lead = pd.concat([lead, df[df.trial.astype(str) == best["baseline"]]])
        try:
            interleaved = remeasure_leaders(run_dir, lead, info, log)
        except WorkbenchError as err:
            interleaved = {"error": str(err)}
        best = choose(df, info, interleaved)
    doc = {"experiment": info["experiment"], "study": info["study"], "question": question(info),
           "table": table_key(df)}
    if best:
        doc.update(best)
        doc["params"] = {k: best["row"].get(k) for k in PARAM_COLUMNS}
        doc["summary"] = headline(df, best)
    else:
        doc.update(trial=None, reason="no completed feasible trial")
    if not sc.remeasure:
        doc["remeasure_skipped"] = sc.remeasure_why
    if best and sc.name == "server":
        doc.update(load_evidence(df, best))
    (run_dir / BEST_FILE).write_text(json.dumps(clean_json(doc), indent=2))
    return doc


def load_evidence(df, best: dict) -> dict[str, Any]:
    """Whether a server recommendation rests on valid load runs: the chosen trial's and those of
    the candidates it was compared with. An invalid run's figures were shaped by the load
    generator (late sends, its own CPU) or by failed requests, not by the server alone."""
    rows = df[(df.kind == "trial") & df.trial.astype(str).isin([str(t) for t in best["candidates"]])]
    chosen = rows[rows.trial.astype(str) == str(best["trial"])].iloc[0]
    invalid = [str(t) for t, v in zip(rows.trial, rows.load_valid) if not _true(v)]
    valid = _true(chosen.load_valid)
    if valid and not invalid:
        text = "rests on valid load runs (every candidate compared)"
    elif valid:
        text = (f"the chosen trial's load run is valid, but trial(s) {', '.join(invalid)} it was compared "
                "with had invalid load runs")
    else:
        text = (f"rests on an INVALID load run ({chosen.load_invalid_reason or 'validity not recorded'}): "
                "the figures describe the load generator as much as the server; re-run on a quieter machine")
    return {"load_valid": valid, "load_invalid_reason": None if valid else chosen.load_invalid_reason,
            "load_runs": text, "invalid_load_trials": invalid}


def _true(v) -> bool:
    """A table cell that holds True (a bool or numpy bool; not None or NaN)."""
    return v is not None and v == v and bool(v)


def _nan(v) -> float:
    return math.nan if v is None else v

def _ratio_ci(num, den) -> tuple[float, float, float]:
    """num.p50 / den.p50 with a conservative interval from both p50 CIs (within one measurement)."""
    est = num.latency_p50_ms / den.latency_p50_ms
    lo = num.latency_p50_ci_low_ms / den.latency_p50_ci_high_ms
    hi = num.latency_p50_ci_high_ms / den.latency_p50_ci_low_ms
    return float(est), float(lo), float(hi)

def headline(df, best: dict | None) -> dict[str, Any]:
    """The recommended trial against the baselines at its batch size, with intervals.

    Speed-up intervals combine both p50 CIs (within one measurement each). The accuracy-drop CI
    is the paired one (same eval samples): drop +- 1.96 * sqrt((d - drop^2) / n), d the fraction
    of samples whose top-1 differs from the fp32 Keras model's, n the trial's ``eval_samples``.
    """
    if not best:
        return {}
    row = df[df.trial.astype(str) == str(best["trial"])].iloc[0]  # a trial, or the baseline kept
    if best.get("scenario") == "server":
        return _server_headline(df, row)
    out: dict[str, Any] = {"trial": best["trial"], "label": row.label, "batch_size": int(row.batch_size),
                           "latency_p50_ms": [float(row.latency_p50_ms), float(row.latency_p50_ci_low_ms),
                                              float(row.latency_p50_ci_high_ms)],
                           "latency_p90_ms": float(row.latency_p90_ms),
                           "throughput_sps": float(row.throughput_sps),
                           "size_bytes": int(row.size_bytes), "accuracy": _nan(row.accuracy),
                           "mae": _nan(row.get("mae"))}
    for runtime, name in (("tensorflow", "keras_fp32"), ("onnxruntime", "onnx_fp32")):
        base = df[(df.kind == "baseline") & (df.runtime == runtime) & (df.batch_size == row.batch_size)
                  & (df.hardware_id == row.hardware_id)]
        if base.empty:
            continue
        b = base.iloc[0]
        out[f"speedup_vs_{name}"] = list(_ratio_ci(b, row))
        out[f"size_reduction_vs_{name}"] = float(b.size_bytes / row.size_bytes)
        out[f"baseline_{name}"] = {"trial": b.trial, "latency_p50_ms": float(b.latency_p50_ms),
                                   "size_bytes": int(b.size_bytes), "accuracy": _nan(b.accuracy),
                                   "mae": _nan(b.get("mae"))}
    drop = float(row.accuracy_drop)
    out["accuracy_drop"] = [drop, math.nan, math.nan]
    n = row.get("eval_samples")
    n = int(n) if n is not None and n == n else None
    agreement = _nan(row.top1_agreement)
    if n and agreement == agreement:
        d, delta = 1.0 - float(agreement) / 100.0, drop / 100.0
        half = 196.0 * math.sqrt(max(d - delta * delta, 0.0) / n)
        out["accuracy_drop"] = [drop, drop - half, drop + half]
        out["eval_samples"] = n
    return clean(out)

def _server_headline(df, row) -> dict[str, Any]:
    """A server trial's figures at its chosen rate, and the in-process fp32 baselines (batch 1)
    as references for size and accuracy only: their latency is of one call in-process, not of a
    request to a served endpoint under load, so no speed-up is derived from it."""
    def num(name):
        v = row.get(name)
        return None if v is None or v != v else float(v)

    out: dict[str, Any] = {"trial": str(row.trial), "label": row.label, "batch_size": 1,
                           "max_qps_at_slo": num("max_qps_at_slo"),
                           **{k: num(k) for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                                                  "latency_p999_ms", "mean_batch_size", "server_cpu_pct",
                                                  "peak_rss_mb", "rejected_requests")},
                           "size_bytes": int(row.size_bytes), "accuracy": _nan(row.accuracy),
                           "mae": _nan(row.get("mae")), "accuracy_drop": [float(row.accuracy_drop), math.nan,
                                                                           math.nan]}
    for runtime, name in (("tensorflow", "keras_fp32"), ("onnxruntime", "onnx_fp32")):
        base = df[(df.kind == "baseline") & (df.runtime == runtime) & (df.hardware_id == row.hardware_id)]
        if base.empty:
            continue
        b = base.sort_values("batch_size").iloc[0]
        out[f"size_reduction_vs_{name}"] = float(b.size_bytes / row.size_bytes)
        out[f"baseline_{name}"] = {"trial": b.trial, "latency_p50_ms": float(b.latency_p50_ms),
                                   "size_bytes": int(b.size_bytes), "accuracy": _nan(b.accuracy),
                                   "mae": _nan(b.get("mae"))}
    return clean(out)
