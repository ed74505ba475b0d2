"""What a report says: the question, the recommendation with its intervals, the machine.

Text only, from ``best.json`` (``workbench.decision`` wrote it) and the results table; nothing
here decides, times or opens an artifact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from workbench.core.scenarios import question
from workbench.results.best import processes_text
from workbench.results.table import COLUMNS, regression_run, server_run, summary_columns


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


def machine(run_dir: Path) -> list[tuple[str, str]]:
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


def feasibility_text(info: dict, df) -> str:
    if regression_run(df):
        return f"feasible means the MAE increase is <= {info['max_accuracy_drop']:g} vs the fp32 model"
    return f"feasible means accuracy drop <= {info['max_accuracy_drop']:g} points vs the fp32 model"


def recommended_text(best: dict) -> str:
    """"trial 7: onnxruntime int8-static b1 t2", or the baseline kept when nothing beat it."""
    if best.get("keep_baseline"):
        return f"{best['reason'].split(':')[0]} (the fp32 baseline, {best['label']})"
    return f"trial {best['trial']}: {best['label']}"


METRIC_NAMES = {"throughput_sps": ("throughput", "samples/s"), "max_qps_at_slo": ("max QPS at SLO", "QPS")}


def asked_metric(best: dict) -> tuple[str, str]:
    """(name, text) of the metric the question asks about, e.g. ("p90 latency", "0.0374 ms per
    batch of 1 (sweep); 0.0371 ms in the interleaved re-measurement")."""
    col = best.get("primary_metric") or "latency_p90_ms"
    name, unit = METRIC_NAMES.get(col, (f"{col.removeprefix('latency_').removesuffix('_ms')} latency", "ms"))
    r = best.get("row") or {}
    batch = f" per batch of {r['batch_size']}" if unit == "ms" and r.get("batch_size") is not None else ""
    text = f"{_nan(r.get(col)):.4g} {unit}{batch}"
    text += " (sweep)"
    if best.get("decided_by") == "interleaved re-measurement" and best.get("primary_value") is not None:
        text += f"; {best['primary_value']:.4g} {unit} in the interleaved re-measurement"
    return name, text


def deploy_text(run_dir: Path, best: dict) -> str:
    """The command that bundles the recommendation, and where its artifact is."""
    artifact = (best.get("row") or {}).get("artifact")
    return (f"`workbench export {run_dir} --out bundle` (artifact, session options, predict.py)"
            + (f"; artifact {artifact}" if artifact else ""))


def speedup_text(row: dict) -> str:
    """The headline's speed-up: against the fp32 Keras model where the model is Keras, else
    against the fp32 ONNX model (a model that exists only as ONNX has no Keras baseline: its
    speed-up is against its own fp32)."""
    for col, what in (("speedup_vs_baseline", "Keras fp32"), ("speedup_vs_onnx_fp32", "the fp32 model")):
        v = row.get(col)
        if v is not None and v == v:
            return f"speed-up vs {what} {v:.2f}x"
    return "no fp32 baseline at this batch size to compare with"


def summary_items(head: dict, best: dict | None, run_dir: Path | None = None) -> list[tuple[str, str]]:
    """The recommendation as (name, text) items: the question's metric first, then how to deploy
    it (with ``run_dir``), the comparisons with the baselines, and why it won."""
    if not best or best.get("trial") is None:
        return [("recommendation", (best or {}).get("reason") or "no completed feasible trial yet")]
    deploy = [("deploy it", deploy_text(run_dir, best))] if run_dir is not None else []
    if best.get("scenario") == "server":
        items = _server_summary_items(head, best)
        return items[:3] + deploy + items[3:]
    items = [("recommended", recommended_text(best)),
             ("question", best.get("question", "?")),
             asked_metric(best), *deploy,
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
    if (best.get("row") or {}).get("float_nodes"):  # int8's accuracy-aware fallback
        items.append(("kept in float", best["row"]["float_nodes"]))
    items.append(("why", best["reason"]))
    items += _interleaved_items(best)
    return items


def _ms(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4g} ms"


def _server_summary_items(head: dict, best: dict) -> list[tuple[str, str]]:
    """A server recommendation: its QPS within the SLO, the latency at that rate, and the
    in-process fp32 baselines as size/accuracy references."""
    items = [("recommended", recommended_text(best)),
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
    if "load_runs" in best:
        items.append(("load runs", best["load_runs"]))
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


def intro(info: dict, df) -> str:
    counts = df[df.kind == "trial"].state.value_counts().to_dict()
    reused = int(df.reused_from.notna().sum()) if "reused_from" in df else 0
    if server_run(df):
        return (f"Question: {question(info)}. "
                "Trials: " + (", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "none") +
                f". Objectives: {', '.join(info['objectives'])}; {feasibility_text(info, df)}, and some "
                "offered rate met the SLO. Each trial served its configuration and ramped an open-loop "
                "Poisson load (latency from the scheduled send); max_qps_at_slo is the achieved rate at "
                "the highest offered rate whose percentile was within the SLO with < 0.1% errors, and "
                "the latency columns are at that rate. load_valid is false where that load run did not "
                "measure the server alone (over 1% of sends more than 1 ms late, the generator over 80% "
                "of a core, or over 0.1% failed requests; why: load_invalid_reason). Baselines are "
                "in-process (batch 1): references for size and accuracy.")
    return (f"Question: {question(info)}. "
            "Trials: " + (", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "none") +
            (f" ({reused} reused an identical measurement)" if reused else "") +
            f". Objectives: {', '.join(info['objectives'])}; {feasibility_text(info, df)}. "
            "Latency is per batch; p50 CIs in the tables are bootstrap 95% CIs within one "
            "measurement (one process, one stretch of time); the decision rests on ratios "
            "across interleaved rounds.")


def markdown(info: dict, df, best: dict | None, head: dict | None = None,
             run_dir: Path | None = None) -> str:
    lines = [f"# {info['experiment']} / {info['study']}", "", intro(info, df), ""]
    decided = best is not None and best.get("trial") is not None
    if decided and best.get("scenario") == "server":
        r = best["row"]
        lines += ["## Recommendation", "",
                  f"**{best.get('question', '')}: trial {best['trial']}: {best['label']}**: "
                  f"{_nan(r.get('max_qps_at_slo')):.4g} QPS within the SLO (p50 {_ms(r.get('latency_p50_ms'))}, "
                  f"p99 {_ms(r.get('latency_p99_ms'))} at that rate), {quality_text(r)} "
                  f"(drop {_nan(r['accuracy_drop']):.3g}), {r['size_bytes']:,} bytes."
                  + ("" if best.get("load_valid", True) else " **Its load run was INVALID: see load runs below.**"),
                  ""]
        lines += [f"- {k}: {v}" for k, v in summary_items(head or {}, best, run_dir)[2:]] + [""]
    elif decided:
        r = best["row"]
        name, text = asked_metric(best)
        lines += ["## Recommendation", "",
                  f"**{best.get('question', '')}: {recommended_text(best)}**: {name} {text}; "
                  f"{quality_text(r)} "
                  f"(drop {_nan(r['accuracy_drop']):.3g}), p50 {r['latency_p50_ms']:.4f} ms "
                  f"[95% CI within one measurement {r['latency_p50_ci_low_ms']:.4f}-{r['latency_p50_ci_high_ms']:.4f}], "
                  f"p90 {r['latency_p90_ms']:.4f} ms per batch of {r['batch_size']}, "
                  f"{r['throughput_sps']:.4g} samples/s, {r['size_bytes']:,} bytes, "
                  f"{speedup_text(r)}.",
                  ""]
        lines += [f"- {k}: {v}" for k, v in summary_items(head or {}, best, run_dir)
                  if k not in ("recommended", "question", name, "p50 per batch")] + [""]
    else:
        why = (best or {}).get("reason") or "no completed feasible trial yet"
        lines += ["## Recommendation", "", why[0].upper() + why[1:] + ".", ""]
    lines += ["## Trials", "", _markdown_table(df[summary_columns(df)]), "",
              "## All columns", "",
              "The same table as `results.csv` (CIs within one measurement, CV, `unstable`, agreement, "
              "memory, load time, notebooks, `reused_from`). Plots and a sortable version: `report.html`.", "",
              _markdown_table(df[COLUMNS]), ""]
    return "\n".join(lines)
