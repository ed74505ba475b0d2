"""Tables, plots and the recommendation of a run directory.

Trials are read from the Optuna storage named in ``run.json`` (so a report built on any machine
of a PostgreSQL sweep sees every trial), baselines from ``baselines/*/metrics.json``. Latency is
only compared between rows measured on the same hardware (fingerprint ``hardware_id``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError, first_line

PARAM_COLUMNS = ["bits", "int8_mode", "sparsity", "prune_structure", "batch_size", "runtime",
                 "provider", "threads"]
METRIC_COLUMNS = ["accuracy", "accuracy_drop", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                  "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_cv", "unstable",
                  "throughput_sps", "size_bytes", "size_gzip_bytes", "max_abs_diff",
                  "top1_agreement", "peak_rss_mb", "load_ms", "mae", "rmse"]  # mae/rmse: regression
COLUMNS = (["trial", "kind", "state", "label"] + PARAM_COLUMNS + METRIC_COLUMNS +
           ["speedup_vs_baseline", "speedup_vs_onnx_fp32", "feasible", "pareto", "reason",
            "notebook", "hardware_id"])
# Not in results.csv: what plots, re-measurement and export need from each row.
EXTRA_COLUMNS = ["latency_quantiles_ms", "artifact", "artifact_format", "params_full"]
SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "latency_p50_ms",
                   "latency_p90_ms", "throughput_sps", "size_bytes", "speedup_vs_baseline",
                   "feasible", "pareto", "reason"]


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise WorkbenchError(f"{run_dir}: not a run directory (no run.json)")
    return json.loads(path.read_text())


# What a measured row needs to be compared and recommended; a row lacking one is shown, with
# the reason, and is not feasible.
NEEDED = ["batch_size", "latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms",
          "latency_p90_ms", "size_bytes", "accuracy_drop"]
NUMERIC_PARAMS = ("bits", "sparsity", "batch_size", "threads")


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
    row.update({k: _number(m.get(k), k, problems) for k in METRIC_COLUMNS if k != "unstable"})
    row["unstable"] = m.get("unstable") if isinstance(m.get("unstable"), bool) else None
    row["feasible"] = m.get("feasible") if isinstance(m.get("feasible"), bool) else None
    if m.get("feasible") is not None and row["feasible"] is None:
        problems.append(f"feasible is {m.get('feasible')!r:.40}")
    row["reason"] = _text(m.get("reason"))
    row["notebook"] = _text(m.get("notebook"))
    fp = m.get("fingerprint")
    row["hardware_id"] = _text(fp.get("hardware_id")) if isinstance(fp, dict) else None
    q = m.get("latency_quantiles_ms")
    row["latency_quantiles_ms"] = q if isinstance(q, dict) and all(
        _number(v, "quantile", []) is not None for v in q.values()) else None
    row["artifact"] = _text(m.get("artifact"))
    row["artifact_format"] = _text(m.get("artifact_format"))
    row["params_full"] = p or None
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
    needed = NEEDED + [o for o in info.get("objectives", []) if o not in NEEDED]
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

    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    df = pd.DataFrame(_baseline_rows(run_dir) + _trial_rows(info), columns=COLUMNS[:-5] +
                      ["feasible", "reason", "notebook", "hardware_id"] + EXTRA_COLUMNS)
    for col in ("accuracy", "mae", "rmse"):  # a regression run has no accuracy (None -> NaN)
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["speedup_vs_baseline"] = _speedup(df, "tensorflow")
    df["speedup_vs_onnx_fp32"] = _speedup(df, "onnxruntime")
    df["pareto"] = _pareto(df, info["objectives"])
    return df[COLUMNS + EXTRA_COLUMNS] if extras else df[COLUMNS]


def _speedup(df, runtime: str):
    """p50 of the baseline in ``runtime`` at the same batch size and hardware / this row's p50."""
    base = df[(df.kind == "baseline") & (df.runtime == runtime)]
    out = []
    for _, r in df.iterrows():
        match = base[(base.batch_size == r.batch_size) & (base.hardware_id == r.hardware_id)]
        ok = len(match) and r.latency_p50_ms and not math.isnan(r.latency_p50_ms or math.nan)
        out.append(float(match.latency_p50_ms.iloc[0] / r.latency_p50_ms) if ok else math.nan)
    return out


def _pareto(df, objectives: list[str]) -> list[bool]:
    """Non-dominated among completed feasible trials (objectives turned into minimisation)."""
    from workbench.config import OBJECTIVES

    cand = (df.kind == "trial") & (df.state == "COMPLETE") & (df.feasible == True)  # noqa: E712
    sign = np.array([-1.0 if OBJECTIVES[o] == "maximize" else 1.0 for o in objectives])
    pts = df.loc[cand, objectives].to_numpy(dtype=float) * sign
    flags = [False] * len(df)
    for i, idx in enumerate(df.index[cand]):
        dominated = np.any(np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1))
        flags[df.index.get_loc(idx)] = not dominated
    return flags


def _simplicity(row) -> int:
    """Fewer transforms is simpler: fp32 < fp16 < int8 < int4, pruning adds one."""
    return {32: 0, 16: 1, 8: 2, 4: 3}.get(int(row.bits or 32), 3) + (1 if row.sparsity else 0)


# At most this many tied candidates are re-measured (interleaved), to bound the time it takes.
MAX_REMEASURE = 3
# p50s closer than this fraction are a tie even when their CIs are tight (tens of thousands of
# interleaved calls make CIs narrower than what a deployment would ever notice).
TIE_MARGIN = 0.02
REMEASURE_FILE = "remeasure.json"


def _feasible_same_hw(df):
    ok = df[(df.kind == "trial") & (df.state == "COMPLETE") & (df.feasible == True)].copy()  # noqa: E712
    if ok.empty:
        return ok, None
    hw = ok.hardware_id.mode().iloc[0]
    return ok[ok.hardware_id == hw], hw


def _tied_with_fastest(ok):
    """Rows (sorted fastest first) whose p50 CI reaches the fastest's, or within TIE_MARGIN."""
    fastest = ok.iloc[0]
    reach = max(fastest.per_sample_hi, fastest.per_sample_ms * (1 + TIE_MARGIN))
    return ok[ok.per_sample_lo <= reach]


def _per_sample(ok, p50, lo, hi):
    return ok.assign(per_sample_ms=p50 / ok.batch_size, per_sample_lo=lo / ok.batch_size,
                     per_sample_hi=hi / ok.batch_size).sort_values("per_sample_ms")


def recommend(df, run_dir: str | Path | None = None, remeasure: bool = False,
              log=None) -> dict[str, Any] | None:
    """The fastest feasible trial (lowest p50 per sample) whose p50 CI overlaps no other's.

    When CIs overlap and ``remeasure`` (and ``run_dir``) is given, the overlapping candidates
    (up to :data:`MAX_REMEASURE`, fastest first) are timed again interleaved in one fresh
    process (``workbench.remeasure``), and the decision is taken on those numbers. Whatever
    still overlaps is a tie: the smallest, simplest artifact among them wins.
    """
    ok, hw = _feasible_same_hw(df)
    if ok.empty:
        return None
    ok = _per_sample(ok, ok.latency_p50_ms, ok.latency_p50_ci_low_ms, ok.latency_p50_ci_high_ms)
    fastest = ok.iloc[0]
    tied = _tied_with_fastest(ok)
    interleaved, decided_by = None, "sweep measurements"
    if len(tied) > 1 and remeasure and run_dir is not None:
        cands = tied.head(MAX_REMEASURE)
        try:
            interleaved = _interleaved(Path(run_dir), cands, log)
        except WorkbenchError as err:
            interleaved = {"error": str(err)}
        if "results" in interleaved:
            res = {str(r["trial"]): r for r in interleaved["results"]}
            col = lambda k: np.array([res[t][k] for t in cands.trial], dtype=float)  # noqa: E731
            again = _per_sample(cands, col("latency_p50_ms"), col("latency_p50_ci_low_ms"),
                                col("latency_p50_ci_high_ms"))
            fastest = again.iloc[0]
            tied = _tied_with_fastest(again)
            decided_by = "interleaved re-measurement"
    tied = tied.assign(simplicity=[_simplicity(r) for _, r in tied.iterrows()])
    winner = tied.sort_values(["size_bytes", "simplicity", "per_sample_ms"]).iloc[0]
    again_txt = " after interleaved re-measurement in one fresh process" if decided_by != "sweep measurements" else ""
    if len(tied) == 1:
        why = (f"fastest feasible trial{again_txt}: {winner.per_sample_ms:.4f} ms per sample (p50), "
               f"its 95% CI does not overlap any other feasible trial's and the next is more than "
               f"{TIE_MARGIN:.0%} slower")
        if again_txt:
            why += " (the sweep's own CIs overlapped)"
    else:
        why = (f"tie: the p50 CIs of trials {', '.join(tied.trial)} overlap the fastest "
               f"({fastest.trial}) or lie within {TIE_MARGIN:.0%} of it{again_txt}; the smallest, "
               f"simplest artifact among them wins")
    if interleaved and "error" in interleaved:
        why += f" (interleaved re-measurement not used: {interleaved['error']})"
    out = {"trial": winner.trial, "label": winner.label, "reason": why, "tie": len(tied) > 1,
           "decided_by": decided_by, "tied_with": [t for t in tied.trial if t != winner.trial],
           "hardware_id": hw, "per_sample_p50_ms": float(winner.per_sample_ms),
           "row": _clean(winner.drop(labels=[c for c in EXTRA_COLUMNS if c in winner.index]).to_dict())}
    if interleaved is not None:
        out["interleaved"] = interleaved
    return out


def _interleaved(run_dir: Path, cands, log=None) -> dict[str, Any]:
    """Interleaved numbers for ``cands``: from ``remeasure.json`` when it holds exactly these
    candidates as measured now (a rebuilt report does not re-measure), else measured afresh."""
    from workbench import fingerprint, remeasure

    here = fingerprint.collect()["hardware_id"]
    if here != cands.hardware_id.iloc[0]:
        raise remeasure.RemeasureError(f"this machine ({here}) is not the hardware the candidates "
                                       f"were measured on ({cands.hardware_id.iloc[0]})")
    key = [[str(r.trial), float(r.latency_p50_ms)] for _, r in cands.iterrows()]
    path = run_dir / REMEASURE_FILE
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["interleaved"]
    if cands.params_full.isna().any():  # a missing artifact is rebuilt from the parameters
        raise remeasure.RemeasureError(f"trials {', '.join(cands.trial)} have no recorded parameters")
    if log:
        log(f"re-measuring trials {', '.join(cands.trial)} interleaved "
            f"(~{remeasure.INTERLEAVE_SECONDS:g} s): their p50 CIs overlap")
    candidates = [{"trial": str(r.trial), "params": r.params_full, "artifact": r.artifact,
                   "artifact_format": r.artifact_format} for _, r in cands.iterrows()]
    results = remeasure.interleave_in_subprocess(candidates)
    interleaved = {"seconds": remeasure.INTERLEAVE_SECONDS, "order": [c["trial"] for c in candidates],
                   "results": results}
    path.write_text(json.dumps({"key": key, "interleaved": interleaved}, indent=2))
    return interleaved


def _nan(v) -> float:
    """None (a cleaned NaN, e.g. the accuracy of a regression run) as NaN, for formatting."""
    return math.nan if v is None else v


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out


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


def _ratio_ci(num, den) -> tuple[float, float, float]:
    """num.p50 / den.p50 with a conservative interval from both p50 CIs."""
    est = num.latency_p50_ms / den.latency_p50_ms
    lo = num.latency_p50_ci_low_ms / den.latency_p50_ci_high_ms
    hi = num.latency_p50_ci_high_ms / den.latency_p50_ci_low_ms
    return float(est), float(lo), float(hi)


def _eval_size(params: dict | None) -> int | None:
    try:
        from workbench import data as data_mod

        return int(len(data_mod.load(params["data"]).y_eval))
    except Exception:  # noqa: BLE001 - the CI is then omitted, the report still builds
        return None


def headline(df, best: dict | None) -> dict[str, Any]:
    """The recommended trial against the baselines at its batch size, with intervals.

    Speed-up intervals combine both p50 CIs (low/high over high/low). The accuracy-drop CI is
    the paired one (same eval samples): drop +- 1.96 * sqrt((d - drop^2) / n), d the fraction of
    samples whose top-1 differs from the fp32 Keras model's.
    """
    if not best:
        return {}
    row = df[(df.kind == "trial") & (df.trial == best["trial"])].iloc[0]
    out: dict[str, Any] = {"trial": best["trial"], "label": row.label, "batch_size": int(row.batch_size),
                           "latency_p50_ms": [float(row.latency_p50_ms), float(row.latency_p50_ci_low_ms),
                                              float(row.latency_p50_ci_high_ms)],
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
    n = _eval_size(row.params_full if isinstance(row.params_full, dict) else None)
    agreement = _nan(row.top1_agreement)
    if n and agreement == agreement:
        d, delta = 1.0 - float(agreement) / 100.0, drop / 100.0
        half = 196.0 * math.sqrt(max(d - delta * delta, 0.0) / n)
        out["accuracy_drop"] = [drop, drop - half, drop + half]
        out["eval_samples"] = n
    return _clean(out)


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
    """SUMMARY_COLUMNS, with MAE in place of accuracy for a regression run."""
    if _regression_run(df):
        return [("mae" if c == "accuracy" else c) for c in SUMMARY_COLUMNS]
    return SUMMARY_COLUMNS


def _summary_items(head: dict, best: dict | None) -> list[tuple[str, str]]:
    if not best:
        return [("recommendation", "no completed feasible trial yet")]
    items = [("recommended", f"trial {best['trial']}: {best['label']}"),
             ("p50 per batch", f"{_interval(head.get('latency_p50_ms'), ' ms')} at batch {head.get('batch_size')}")]
    for name, title in (("keras_fp32", "Keras fp32 (TensorFlow)"), ("onnx_fp32", "ONNX fp32 (onnxruntime)")):
        if f"speedup_vs_{name}" in head:
            b = head[f"baseline_{name}"]
            items.append((f"vs {title}", f"speed-up {_interval(head[f'speedup_vs_{name}'], 'x', 3)}, "
                                         f"size {head[f'size_reduction_vs_{name}']:.2f}x smaller "
                                         f"({b['size_bytes']:,} -> {head['size_bytes']:,} bytes); baseline p50 "
                                         f"{b['latency_p50_ms']:.4g} ms, {quality_text(b)}"))
    n = head.get("eval_samples")
    if _is_regression_value(head):
        items.append(("quality", f"{quality_text(head)}, MAE increase {_nan(head['accuracy_drop'][0]):.4g} "
                                 "vs the fp32 model"))
    else:
        items.append(("accuracy", f"{_nan(head['accuracy']):.2f}%, drop {_interval(head.get('accuracy_drop'), ' pt', 3)}"
                                  + (f" (paired, {n} eval samples)" if n else "")))
    items.append(("why", best["reason"]))
    inter = best.get("interleaved") or {}
    for r in inter.get("results", []):
        items.append((f"interleaved: trial {r['trial']}",
                      f"p50 {r['latency_p50_ms']:.4g} ms [95% CI {r['latency_p50_ci_low_ms']:.4g}-"
                      f"{r['latency_p50_ci_high_ms']:.4g}] over {r['n_runs']} runs, batch {r['batch_size']}"))
    return items


def build(run_dir: str | Path, remeasure: bool = True, progress: bool = False) -> dict[str, Path]:
    """Write results.csv, report.md, report.html, the plots and best.json into ``run_dir``.

    ``remeasure``: settle overlapping p50 CIs of the fastest candidates by an interleaved
    re-measurement (a few seconds, once per set of candidates; see :func:`recommend`).
    """
    from workbench import plots

    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    full = load_table(run_dir, extras=True)
    df = full[COLUMNS]
    paths = {name: run_dir / name for name in ("results.csv", "report.md", "report.html", "best.json")}
    df.to_csv(paths["results.csv"], index=False)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None
    best = recommend(full, run_dir, remeasure=remeasure, log=log)
    best_doc = ({"experiment": info["experiment"], "study": info["study"], **best} if best else
                {"experiment": info["experiment"], "study": info["study"], "trial": None,
                 "reason": "no completed feasible trial"})
    head = headline(full, best)
    if best:
        best_doc["params"] = {k: best["row"].get(k) for k in PARAM_COLUMNS}
        best_doc["summary"] = head
    paths["best.json"].write_text(json.dumps(best_doc, indent=2))
    images = plots.draw_all(full, run_dir, info["objectives"], info["max_accuracy_drop"])
    paths.update({name.removesuffix(".png"): p for name, p in images.items()})
    paths["report.md"].write_text(_markdown(info, df, best, head))
    paths["report.html"].write_text(_html(info, run_dir, df, best, head, images))
    return paths


def _html(info: dict, run_dir: Path, df, best: dict | None, head: dict, images: dict[str, Path]) -> str:
    from workbench import html, plots

    counts = df[df.kind == "trial"].state.value_counts().to_dict()
    intro = (f"<p>Trials: {html.esc(', '.join(f'{v} {k.lower()}' for k, v in counts.items()) or 'none')}. "
             f"Objectives: {html.esc(', '.join(info['objectives']))}; {html.esc(feasibility_text(info, df))}. "
             "Latency is per batch "
             f"(p50 with a bootstrap 95% CI) unless it says per sample.</p>")
    cls = "rec tie" if best and best.get("tie") else "rec"
    base = df[df.kind == "baseline"][["trial", summary_columns(df)[3], "latency_p50_ms", "latency_p50_ci_low_ms",
                                      "latency_p50_ci_high_ms", "latency_p90_ms", "size_bytes"]]
    figs = "".join(html.image(images[name], title) for name, title in plots.PLOTS if name in images)
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
    lines = [f"# {info['experiment']} / {info['study']}", ""]
    counts = df[df.kind == "trial"].state.value_counts().to_dict()
    lines.append("Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) +
                 f". Objectives: {', '.join(info['objectives'])}; {feasibility_text(info, df)}.")
    lines.append("")
    if best:
        r = best["row"]
        lines += ["## Recommendation", "",
                  f"**Trial {best['trial']}: {best['label']}**: {quality_text(r)} "
                  f"(drop {r['accuracy_drop']:.3g}), p50 {r['latency_p50_ms']:.4f} ms "
                  f"[95% CI {r['latency_p50_ci_low_ms']:.4f}-{r['latency_p50_ci_high_ms']:.4f}], "
                  f"p90 {r['latency_p90_ms']:.4f} ms per batch of {r['batch_size']}, "
                  f"{r['size_bytes']:,} bytes, speed-up vs Keras {r['speedup_vs_baseline'] or float('nan'):.2f}x.",
                  ""]
        lines += [f"- {k}: {v}" for k, v in _summary_items(head or {}, best)[2:]] + [""]
    else:
        lines += ["## Recommendation", "", "No completed feasible trial yet.", ""]
    lines += ["## Trials", "", _markdown_table(df[summary_columns(df)]), "",
              "## All columns", "",
              "The same table as `results.csv` (CIs, CV, `unstable`, agreement, memory, load time, "
              "notebooks). Plots and a sortable version: `report.html`.", "",
              _markdown_table(df[COLUMNS]), ""]
    return "\n".join(lines)


def latest_run_dir(runs_dir: str | Path) -> Path:
    """The most recently modified run directory under ``runs_dir``."""
    runs = sorted(Path(runs_dir).glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise WorkbenchError(f"{runs_dir}: no run directories (run a sweep first)")
    return runs[-1].parent
