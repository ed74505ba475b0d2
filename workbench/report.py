"""Tables, plots and the recommendation of a run directory.

Trials are read from the Optuna storage named in ``run.json`` (so a report built on any machine
of a PostgreSQL sweep sees every trial), baselines from ``baselines/*/metrics.json``. Latency is
only compared between rows measured on the same hardware (fingerprint ``hardware_id``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

PARAM_COLUMNS = ["bits", "int8_mode", "sparsity", "prune_structure", "batch_size", "runtime",
                 "provider", "threads"]
METRIC_COLUMNS = ["accuracy", "accuracy_drop", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                  "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_cv", "unstable",
                  "throughput_sps", "size_bytes", "size_gzip_bytes", "max_abs_diff",
                  "top1_agreement", "peak_rss_mb", "load_ms"]
COLUMNS = (["trial", "kind", "state", "label"] + PARAM_COLUMNS + METRIC_COLUMNS +
           ["speedup_vs_baseline", "speedup_vs_onnx_fp32", "feasible", "pareto", "reason",
            "notebook", "hardware_id"])
SUMMARY_COLUMNS = ["trial", "state", "label", "accuracy", "accuracy_drop", "latency_p50_ms",
                   "latency_p90_ms", "throughput_sps", "size_bytes", "speedup_vs_baseline",
                   "feasible", "pareto", "reason"]


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise WorkbenchError(f"{run_dir}: not a run directory (no run.json)")
    return json.loads(path.read_text())


def _row(kind: str, trial: str, state: str, params: dict, metrics: dict | None) -> dict[str, Any]:
    m = metrics or {}
    p = {**params, **m.get("params", {})}
    row = {"trial": trial, "kind": kind, "state": state, "label": m.get("label", "")}
    row.update({k: p.get(k) for k in PARAM_COLUMNS})
    if p.get("bits") != 8:
        row["int8_mode"] = None
    if not p.get("sparsity"):
        row["prune_structure"] = None
    row.update({k: m.get(k) for k in METRIC_COLUMNS})
    row["feasible"] = m.get("feasible")
    row["reason"] = m.get("reason")
    row["notebook"] = m.get("notebook")
    row["hardware_id"] = m.get("fingerprint", {}).get("hardware_id")
    return row


def _trial_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from workbench.storage import open_storage

    study = optuna.load_study(study_name=info["study"], storage=open_storage(info["storage"]))
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING" or "duplicate_of" in t.user_attrs:
            continue  # enqueued and not started, or a skipped repeat of a measured trial
        attrs = t.user_attrs
        metrics = attrs.get("metrics")
        row = _row("trial", str(t.number), t.state.name, attrs.get("params", t.params), metrics)
        if not row["label"] and attrs.get("params"):
            from workbench.params import TrialParams

            try:
                row["label"] = TrialParams.parse(attrs["params"]).describe()
            except WorkbenchError:
                pass
        row["reason"] = attrs.get("reason") or attrs.get("error") or row["reason"]
        row["notebook"] = attrs.get("notebook") or row["notebook"]
        rows.append(row)
    return rows


def _baseline_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run_dir / "baselines").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        rt = m["params"]["runtime"]
        name = f"baseline:{'keras' if rt == 'tensorflow' else 'onnx-fp32'}:b{m['params']['batch_size']}"
        rows.append(_row("baseline", name, "BASELINE", {}, m))
    return rows


def load_table(run_dir: str | Path):
    """All rows of a run (baselines first), with speed-ups, feasibility and the Pareto flag."""
    import pandas as pd

    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    df = pd.DataFrame(_baseline_rows(run_dir) + _trial_rows(info), columns=COLUMNS[:-5] +
                      ["feasible", "reason", "notebook", "hardware_id"])
    df["speedup_vs_baseline"] = _speedup(df, "tensorflow")
    df["speedup_vs_onnx_fp32"] = _speedup(df, "onnxruntime")
    df["pareto"] = _pareto(df, info["objectives"])
    return df[COLUMNS]


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


def recommend(df) -> dict[str, Any] | None:
    """The fastest feasible trial (lowest p50 per sample). When its p50 CI overlaps others',
    those are a tie and the smallest, simplest artifact among them wins."""
    ok = df[(df.kind == "trial") & (df.state == "COMPLETE") & (df.feasible == True)].copy()  # noqa: E712
    if ok.empty:
        return None
    hw = ok.hardware_id.mode().iloc[0]
    ok = ok[ok.hardware_id == hw]
    ok["per_sample_ms"] = ok.latency_p50_ms / ok.batch_size
    ok["per_sample_hi"] = ok.latency_p50_ci_high_ms / ok.batch_size
    ok["per_sample_lo"] = ok.latency_p50_ci_low_ms / ok.batch_size
    ok = ok.sort_values("per_sample_ms")
    fastest = ok.iloc[0]
    tied = ok[ok.per_sample_lo <= fastest.per_sample_hi]
    tied = tied.assign(simplicity=[_simplicity(r) for _, r in tied.iterrows()])
    winner = tied.sort_values(["size_bytes", "simplicity", "per_sample_ms"]).iloc[0]
    if len(tied) == 1:
        why = (f"fastest feasible trial: {winner.per_sample_ms:.4f} ms per sample (p50), its 95% CI "
               f"does not overlap any other feasible trial's")
    else:
        why = (f"tie: the p50 CIs of trials {', '.join(tied.trial)} overlap the fastest "
               f"({fastest.trial}); the smallest, simplest artifact among them wins")
    return {"trial": winner.trial, "label": winner.label, "reason": why,
            "tied_with": [t for t in tied.trial if t != winner.trial],
            "hardware_id": hw, "row": _clean(winner.to_dict())}


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


def plot_pareto(df, path: Path, max_drop: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    done = df[df.state.isin(["COMPLETE", "BASELINE"])]
    trials = done[done.kind == "trial"]
    for feasible, marker, name in ((True, "o", "feasible"), (False, "x", "infeasible")):
        sel = trials[trials.feasible == feasible]  # noqa: E712
        ax.scatter(sel.latency_p90_ms, sel.accuracy, marker=marker, s=40,
                   c=["tab:blue" if feasible else "tab:red"] * len(sel), label=name)
    front = trials[trials.pareto == True].sort_values("latency_p90_ms")  # noqa: E712
    if len(front):
        ax.plot(front.latency_p90_ms, front.accuracy, "-", color="tab:blue", alpha=0.5, label="Pareto front")
    base = done[done.kind == "baseline"]
    ax.scatter(base.latency_p90_ms, base.accuracy, marker="*", s=140, c="black", label="baselines")
    for _, r in done.iterrows():
        ax.annotate(r.trial.replace("baseline:", ""), (r.latency_p90_ms, r.accuracy), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ref = base.accuracy.max() if len(base) else None
    if ref is not None and not math.isnan(ref):
        ax.axhline(ref - max_drop, ls="--", color="grey", lw=1, label=f"max drop {max_drop:g} pt")
    if (done.latency_p90_ms > 0).any():
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no completed trials yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("p90 latency per batch (ms, log scale)")
    ax.set_ylabel("accuracy on the eval split (%)")
    ax.set_title("Accuracy vs p90 latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build(run_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, report.md, pareto.png and best.json into ``run_dir``."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    df = load_table(run_dir)
    paths = {name: run_dir / name for name in ("results.csv", "report.md", "pareto.png", "best.json")}
    df.drop(columns=[]).to_csv(paths["results.csv"], index=False)
    best = recommend(df)
    best_doc = ({"experiment": info["experiment"], "study": info["study"], **best} if best else
                {"experiment": info["experiment"], "study": info["study"], "trial": None,
                 "reason": "no completed feasible trial"})
    if best:
        best_doc["params"] = {k: best["row"].get(k) for k in PARAM_COLUMNS}
    paths["best.json"].write_text(json.dumps(best_doc, indent=2))
    plot_pareto(df, paths["pareto.png"], info["max_accuracy_drop"])
    paths["report.md"].write_text(_markdown(info, df, best))
    return paths


def _markdown(info: dict, df, best: dict | None) -> str:
    env_path = None
    lines = [f"# {info['experiment']} / {info['study']}", ""]
    counts = df[df.kind == "trial"].state.value_counts().to_dict()
    lines.append("Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) +
                 f". Objectives: {', '.join(info['objectives'])}; feasible means accuracy drop "
                 f"<= {info['max_accuracy_drop']:g} points vs the fp32 Keras model.")
    lines.append("")
    if best:
        r = best["row"]
        lines += ["## Recommendation", "",
                  f"**Trial {best['trial']}: {best['label']}**: accuracy {r['accuracy']:.2f}% "
                  f"(drop {r['accuracy_drop']:.2f} pt), p50 {r['latency_p50_ms']:.4f} ms "
                  f"[95% CI {r['latency_p50_ci_low_ms']:.4f}-{r['latency_p50_ci_high_ms']:.4f}], "
                  f"p90 {r['latency_p90_ms']:.4f} ms per batch of {r['batch_size']}, "
                  f"{r['size_bytes']:,} bytes, speed-up vs Keras {r['speedup_vs_baseline'] or float('nan'):.2f}x.",
                  "", f"Why: {best['reason']}.", ""]
    else:
        lines += ["## Recommendation", "", "No completed feasible trial yet.", ""]
    lines += ["## Trials", "", _markdown_table(df[SUMMARY_COLUMNS]), "",
              "Full columns (CIs, CV, agreement, memory, load time, notebooks): `results.csv`.", ""]
    return "\n".join(lines)


def latest_run_dir(runs_dir: str | Path) -> Path:
    """The most recently modified run directory under ``runs_dir``."""
    runs = sorted(Path(runs_dir).glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise WorkbenchError(f"{runs_dir}: no run directories (run a sweep first)")
    return runs[-1].parent
