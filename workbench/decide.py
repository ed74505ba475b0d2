"""Which configuration to deploy: scenario metrics, Pareto fronts per hardware, the interleaved
re-measurement of the leading candidates, and the choice written to ``best.json``.

The one place a recommendation is made (``report.py`` only renders it). The rules:

* A *scenario* (MLPerf vocabulary) says which question is answered: ``single_stream`` (one
  sample at a time: the lowest latency percentile at batch 1), ``offline`` (the whole set:
  the highest throughput, batch size searched) or ``server`` (Poisson arrivals to an
  endpoint: the highest QPS whose ``slo_percentile``-th latency is within ``slo_ms``). Each
  scenario is one entry of :data:`SCENARIOS`.
* Candidates are completed, feasible trials (accuracy drop within bounds, latency budget met)
  on one hardware (``hardware_id``), on the Pareto front of the declared objectives computed
  on that hardware, that answer the scenario's question (single_stream: batch 1).
* Sweep numbers come from separate processes minutes apart; on a shared machine a p50 moves
  17-26% between them while each trial's own CI is +-0.05%. So the leading candidates (every
  candidate within :data:`LEAD_MARGIN` of the best, at least 2, at most :data:`MAX_LEADERS`)
  are always re-measured together in one fresh process over R >= 5 rounds in rotating order,
  and compared by paired per-round ratios: A beats B only when the CI of the ratio across
  rounds excludes 1 *and* the difference is over :data:`TIE_MARGIN`. Otherwise it is a tie and
  the smallest, simplest artifact wins. A comparison still undecided after R rounds (a gap over
  the margin whose CI includes 1) gets R more rounds in another fresh process, up to
  :data:`MAX_ROUNDS`. Server trials are not re-measured (``remeasure`` is
  False for that scenario): their number is a served process under load, not a call that can
  be interleaved in-process; they are compared on the sweep's numbers, within
  :data:`TIE_MARGIN` a tie.

This module never imports ``trial``: the re-measurement runs in ``python -m
workbench.remeasure``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workbench.errors import WorkbenchError

# Leading candidates: within this fraction of the best on the primary metric ... (wider than
# the 10% first planned: a 20 us model's p90 moves by a factor of 1.3 between one-second windows
# on a shared 2-core VM, so a 10% cut on sweep numbers too often left the true best out;
# re-measuring five candidates costs seconds. benchmarks/decision.md)
LEAD_MARGIN = 0.25
# ... at most this many (at least two when there are two).
MAX_LEADERS = 5
# A paired difference smaller than this is a tie even when its CI excludes 1.
TIE_MARGIN = 0.02
# Interleaved rounds (R >= 5) and seconds of timed calls per candidate per round.
ROUNDS = 7
SLOT_SECONDS = 0.15
# Undecided after ROUNDS (a gap over TIE_MARGIN whose CI still includes 1): ROUNDS more, up to this.
MAX_ROUNDS = 21
BEST_FILE = "best.json"
REMEASURE_FILE = "remeasure.json"


@dataclass(frozen=True)
class Scenario:
    """One deployment question: its primary metric and what the search varies.

    ``primary(percentile)`` names the metrics column; ``direction`` is ``minimize`` or
    ``maximize``; ``batch_one`` restricts candidates to batch-1 rows (a single stream sends one
    sample at a time; an experiment that fixes only larger sizes gets its smallest); ``searched`` lists the parameters an automatic space varies;
    ``objectives(percentile)`` the default objectives; ``question(percentile, info)`` is printed
    in the report (``info``: the run's settings, e.g. the server's SLO); ``remeasure``: whether
    the leaders are re-measured interleaved in-process (``remeasure_why`` says why not).
    """

    name: str
    primary: Callable[[int], str]
    direction: str
    searched: tuple[str, ...]
    objectives: Callable[[int], list[str]]
    question: Callable[[int, dict], str]
    batch_one: bool = False
    remeasure: bool = True
    remeasure_why: str = ""
    implemented: bool = True
    not_yet: str = ""
    # Per-round statistic of the interleaved re-measurement, from per-call ms and batch size.
    round_stat: Callable[[np.ndarray, int, int], float] = field(
        default=lambda ms, batch, pct: float(np.percentile(ms, pct)))


def _throughput(ms: np.ndarray, batch: int, pct: int) -> float:
    return float(batch * 1e3 / np.mean(ms))


SCENARIOS: dict[str, Scenario] = {
    "single_stream": Scenario(
        name="single_stream",
        primary=lambda pct: f"latency_p{pct}_ms",
        direction="minimize",
        searched=("bits", "int8_mode", "per_channel", "sparsity", "prune_structure", "runtime", "threads"),
        objectives=lambda pct: ["accuracy", f"latency_p{pct}_ms", "size_bytes"],
        question=lambda pct, info: f"lowest p{pct} latency at batch 1",
        batch_one=True,
    ),
    "offline": Scenario(
        name="offline",
        primary=lambda pct: "throughput_sps",
        direction="maximize",
        searched=("bits", "int8_mode", "per_channel", "sparsity", "prune_structure", "runtime", "threads",
                  "batch_size"),
        objectives=lambda pct: ["accuracy", "throughput_sps", "size_bytes"],
        question=lambda pct, info: "highest throughput (samples/s), any batch size",
        round_stat=_throughput,
    ),
    # workbench.serve.trial: each trial serves its variant and ramps an open-loop load
    "server": Scenario(
        name="server",
        primary=lambda pct: "max_qps_at_slo",
        direction="maximize",
        searched=("bits", "runtime", "threads", "serving_engine", "max_batch_size", "max_queue_delay_ms",
                  "batch_policy", "instances"),
        objectives=lambda pct: ["accuracy", "max_qps_at_slo", "size_bytes"],
        question=lambda pct, info: (f"highest QPS with p{float(info.get('slo_percentile') or 99):g} <= "
                                    f"{float(info.get('slo_ms') or float('nan')):g} ms"),
        remeasure=False,
        remeasure_why=("server trials are not re-measured interleaved in-process: their metric is the "
                       "highest rate a served process sustained under an open-loop load within the SLO, "
                       "which an in-process timing loop does not measure; compared on the sweep's own "
                       f"measurements, within {TIE_MARGIN:.0%} a tie"),
    ),
}
LATENCY_PERCENTILES = (50, 90, 95, 99)


def scenario(name: str) -> Scenario:
    """The :class:`Scenario` called ``name``; unknown or not implemented: ``WorkbenchError``."""
    if name not in SCENARIOS:
        raise WorkbenchError(f"scenario: unknown {name!r} (choose from {', '.join(SCENARIOS)})")
    sc = SCENARIOS[name]
    if not sc.implemented:
        raise WorkbenchError(f"scenario: {sc.not_yet}")
    return sc


def question(info: dict[str, Any], batch: int | None = None) -> str:
    """The question a run answers, e.g. ``single_stream: lowest p90 latency at batch 1,
    accuracy drop <= 1 pt`` (``batch``: the batch size a single stream was measured at, when an
    experiment fixes one other than 1)."""
    sc = scenario(info.get("scenario", "single_stream"))
    pct = int(info.get("latency_percentile", 90))
    regression = info.get("task") == "regression"
    quality = (f"MAE increase <= {info['max_accuracy_drop']:g}" if regression else
               f"accuracy drop <= {info['max_accuracy_drop']:g} pt")
    text = f"{sc.name}: {sc.question(pct, info)}, {quality}"
    if sc.batch_one and batch not in (None, 1):
        text = text.replace("at batch 1", f"at batch {batch} (the smallest measured)")
    if info.get("latency_budget_ms"):
        text += f", p{pct} <= {info['latency_budget_ms']:g} ms"
    return text


def _directions(objectives: list[str]) -> np.ndarray:
    from workbench.config import OBJECTIVES

    return np.array([-1.0 if OBJECTIVES[o] == "maximize" else 1.0 for o in objectives])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``points`` (every column to be minimised)."""
    pts = np.asarray(points, dtype=float)
    out = np.zeros(len(pts), dtype=bool)
    for i in range(len(pts)):
        dominated = np.any(np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1))
        out[i] = not dominated
    return out


def pareto_flags(df, objectives: list[str], ok=None) -> list[bool]:
    """Pareto membership of every row, computed among the completed feasible (``ok``, default:
    :func:`feasible`) trials of the same hardware (``hardware_id``): latencies on two machines
    are not comparable."""
    ok = feasible(df) if ok is None else ok
    flags = np.zeros(len(df), dtype=bool)
    sign = _directions(objectives)
    cand = np.asarray(ok, dtype=bool) & _complete_trials(df).to_numpy()
    for hw in df.loc[cand, "hardware_id"].dropna().unique():
        sel = cand & (df.hardware_id == hw).to_numpy()
        pts = df.loc[sel, objectives].to_numpy(dtype=float) * sign
        ok = ~np.isnan(pts).any(axis=1)
        mask = np.zeros(len(pts), dtype=bool)
        mask[ok] = pareto_mask(pts[ok])
        flags[np.flatnonzero(sel)] = mask
    return flags.tolist()


def _complete_trials(df):
    return (df.kind == "trial") & (df.state == "COMPLETE")


def feasible(df, info: dict[str, Any] | None = None):
    """Accuracy feasibility as the trial recorded it, plus the scenario's latency budget."""
    ok = (df.feasible == True).to_numpy()  # noqa: E712
    budget = (info or {}).get("latency_budget_ms")
    if budget:
        col = f"latency_p{int(info.get('latency_percentile', 90))}_ms"
        ok = ok & (df[col].astype(float) <= float(budget)).to_numpy()
    import pandas as pd

    return pd.Series(ok, index=df.index)


def simplicity(row) -> int:
    """Fewer transforms is simpler: fp32 < fp16 < int8 < int4, pruning adds one."""
    bits = row.get("bits") if isinstance(row, dict) else row.bits
    sparsity = row.get("sparsity") if isinstance(row, dict) else row.sparsity
    bits = 32 if bits is None or bits != bits else int(bits)
    return {32: 0, 16: 1, 8: 2, 4: 3}.get(bits, 3) + (1 if sparsity else 0)


def candidates(df, info: dict[str, Any]):
    """Rows that may be recommended, best first by the primary metric, and their hardware.

    Completed, feasible, on the most common hardware, answering the scenario (batch 1 for
    single_stream), on the Pareto front of the declared objectives on that hardware.
    """
    sc = scenario(info.get("scenario", "single_stream"))
    col = sc.primary(int(info.get("latency_percentile", 90)))
    feas = feasible(df, info)
    base = _complete_trials(df).to_numpy() & feas.to_numpy()
    pool = df[base]
    if pool.empty:
        return pool, None, col
    hw = pool.hardware_id.mode().iloc[0] if pool.hardware_id.notna().any() else None
    sel = base & np.array(pareto_flags(df, info["objectives"], feas), dtype=bool)
    if hw is not None:
        sel &= (df.hardware_id == hw).to_numpy()
    if sc.batch_one:  # one sample at a time: batch 1, or the smallest size an experiment fixed
        sel &= (df.batch_size == pool.batch_size.min()).to_numpy()
    out = df[sel & df[col].notna().to_numpy()]
    return out.sort_values(col, ascending=sc.direction == "minimize"), hw, col


def leaders(cands, col: str, direction: str):
    """Every candidate within :data:`LEAD_MARGIN` of the best on ``col`` (sorted best first):
    at least two when there are two, at most :data:`MAX_LEADERS`."""
    if cands.empty:
        return cands
    best = float(cands[col].iloc[0])
    vals = cands[col].astype(float)
    near = vals <= best * (1 + LEAD_MARGIN) if direction == "minimize" else vals >= best / (1 + LEAD_MARGIN)
    n = int(near.sum())
    return cands.head(min(max(n, 2), MAX_LEADERS))


def paired_ratio(a: list[float] | np.ndarray, b: list[float] | np.ndarray,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Geometric-mean ratio a/b over paired rounds, with a t-interval on the log ratios.

    Rounds pair the two candidates in time, so a slow stretch of the machine hits both: the
    ratio is stable where the raw numbers drift.
    """
    from scipy import stats

    la = np.log(np.asarray(a, dtype=float))
    lb = np.log(np.asarray(b, dtype=float))
    d = la - lb
    n = len(d)
    if n < 2:
        raise WorkbenchError("a paired ratio needs at least two rounds")
    m = float(d.mean())
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def beats(ratio: tuple[float, float, float], direction: str, margin: float = TIE_MARGIN) -> bool:
    """Does A beat B, given ``ratio`` = A/B (estimate, low, high) of a metric to ``direction``?

    Only when the CI excludes 1 and the estimate is more than ``margin`` better.
    """
    est, lo, hi = ratio
    if direction == "minimize":
        return hi < 1.0 and est < 1.0 / (1.0 + margin)
    return lo > 1.0 and est > 1.0 + margin


def settle(rounds: dict[str, list[float]], direction: str) -> dict[str, Any]:
    """The decision among re-measured candidates from their per-round values.

    The leader has the best geometric mean over the rounds; every candidate the leader does not
    beat (paired ratio, :func:`beats`) is tied with it. Returns the leader, the tie set and each
    candidate's ratio to the leader (candidate / leader, with its CI across rounds).
    """
    names = list(rounds)
    gm = {t: float(np.exp(np.mean(np.log(np.asarray(v, dtype=float))))) for t, v in rounds.items()}
    leader = (min if direction == "minimize" else max)(names, key=lambda t: gm[t])
    ratios = {}
    tied = [leader]
    for t in names:
        if t == leader:
            continue
        r = paired_ratio(rounds[t], rounds[leader])  # this candidate over the leader
        ratios[t] = {"vs": leader, "ratio": r[0], "ci": [r[1], r[2]]}
        if not beats((1 / r[0], 1 / r[2], 1 / r[1]), direction):  # leader over this candidate
            tied.append(t)
    return {"leader": leader, "tied": tied, "ratios": ratios, "geomean": gm}


def undecided(settled: dict[str, Any]) -> bool:
    """Would more rounds help? True when a candidate tied with the leader differs from it by
    more than :data:`TIE_MARGIN`: a real gap, maybe, that the rounds so far cannot tell from
    noise. (Ties within the margin are ties however many rounds are run.)"""
    return any(abs(math.log(r["ratio"])) > math.log1p(TIE_MARGIN)
               for t, r in settled["ratios"].items() if t in settled["tied"])


def processes_text(interleaved: dict[str, Any]) -> str:
    """Where a re-measurement's rounds ran: "one fresh process" or "N fresh processes"."""
    n = int(interleaved.get("processes", 1))
    return "one fresh process" if n == 1 else f"{n} fresh processes"


def pick_simplest(rows) -> Any:
    """Among tied rows, the smallest artifact, then the simplest, then the best listed first."""
    rows = rows.assign(_simplicity=[simplicity(r) for _, r in rows.iterrows()],
                       _order=range(len(rows)))
    return rows.sort_values(["size_bytes", "_simplicity", "_order"]).iloc[0]


def choose(df, info: dict[str, Any], interleaved: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The recommendation of table ``df`` (``report.load_table(..., extras=True)``).

    With ``interleaved`` (from :func:`remeasure_leaders`) the leaders are compared by paired
    per-round ratios; without it (no re-measurement possible) every leader within
    :data:`TIE_MARGIN` of the best counts as tied, and the reason says so.
    """
    sc = scenario(info.get("scenario", "single_stream"))
    cands, hw, col = candidates(df, info)
    if cands.empty:
        return None
    lead = leaders(cands, col, sc.direction)
    batch = int(cands.batch_size.iloc[0]) if sc.batch_one else None
    base = {"scenario": sc.name, "question": question(info, batch), "primary_metric": col,
            "direction": sc.direction, "hardware_id": hw,
            "candidates": [str(t) for t in lead.trial]}
    if interleaved and "rounds" in interleaved:
        got = settle({t: interleaved["rounds"][t] for t in lead.trial.astype(str)}, sc.direction)
        tied = lead[lead.trial.astype(str).isin(got["tied"])]
        decided_by = "interleaved re-measurement"
        leader = got["leader"]
        detail = {**interleaved, **got}
    else:
        best = float(lead[col].iloc[0])
        vals = lead[col].astype(float)
        near = vals <= best * (1 + TIE_MARGIN) if sc.direction == "minimize" else vals >= best / (1 + TIE_MARGIN)
        tied, leader, detail = lead[near], str(lead.trial.iloc[0]), interleaved
        decided_by = "sweep measurements"
    winner = pick_simplest(tied)
    others = [str(t) for t in tied.trial if str(t) != str(winner.trial)]
    unit = {"throughput_sps": "samples/s", "max_qps_at_slo": "QPS"}.get(col, "ms")
    if decided_by == "interleaved re-measurement":
        value = detail["geomean"][str(winner.trial)]
        how = (f"{len(lead)} leading candidates re-measured together over {detail['n_rounds']} "
               f"interleaved rounds in {processes_text(detail)}; compared by paired per-round ratios")
    elif len(lead) == 1:
        value = float(winner[col])
        how = "the only feasible candidate on the Pareto front that answers the question"
    else:
        value = float(winner[col])
        how = "decided on the sweep's own measurements (no interleaved re-measurement"
        why_not = (detail or {}).get("error") or (detail or {}).get("skipped")
        how += f": {why_not})" if why_not else ")"
    if len(tied) == 1:
        why = f"best {col} ({value:.4g} {unit}) among {len(cands)} candidate(s); {how}"
        if len(lead) > 1 and decided_by == "interleaved re-measurement":
            why += f"; beats trials {', '.join(str(t) for t in lead.trial if str(t) != str(winner.trial))}"
    else:
        why = (f"tie on {col} between trials {', '.join(str(t) for t in tied.trial)} (leader {leader}: "
               f"ratio CI includes 1 or difference <= {TIE_MARGIN:.0%}); the smallest, simplest artifact "
               f"wins; {how}")
    out = {**base, "trial": str(winner.trial), "label": winner.label, "reason": why,
           "tie": len(tied) > 1, "tied_with": others, "decided_by": decided_by,
           "primary_value": value,
           "row": clean(winner.drop(labels=[c for c in ("latency_quantiles_ms", "params_full")
                                            if c in winner.index]).to_dict())}
    if detail is not None:
        out["interleaved"] = detail
    return out


def clean(d: dict) -> dict:
    """NaN -> None and numpy scalars -> Python, for JSON."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out


# --- re-measurement -------------------------------------------------------------------------

def remeasure_leaders(run_dir: Path, lead, info: dict[str, Any], log=None,
                      rounds: int = ROUNDS, slot_seconds: float = SLOT_SECONDS) -> dict[str, Any]:
    """Per-round values of the primary metric for ``lead`` (rows with ``params_full``), timed
    together in a fresh process; cached in ``remeasure.json`` for exactly these candidates."""
    from workbench import fingerprint, remeasure

    sc = scenario(info.get("scenario", "single_stream"))
    pct = int(info.get("latency_percentile", 90))
    here = fingerprint.collect()["hardware_id"]
    if here != lead.hardware_id.iloc[0]:
        raise remeasure.RemeasureError(f"this machine ({here}) is not the hardware the candidates "
                                       f"were measured on ({lead.hardware_id.iloc[0]})")
    key = {"trials": [[str(r.trial), str(r.artifact)] for _, r in lead.iterrows()],
           "scenario": sc.name, "percentile": pct, "rounds": rounds}
    path = Path(run_dir) / REMEASURE_FILE
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["interleaved"]
    if lead.params_full.isna().any():
        raise remeasure.RemeasureError(f"trials {', '.join(lead.trial)} have no recorded parameters")
    if log:
        log(f"re-measuring trials {', '.join(lead.trial)} together: {rounds} interleaved rounds")
    cands = [{"trial": str(r.trial), "params": r.params_full, "artifact": r.artifact,
              "artifact_format": r.artifact_format} for _, r in lead.iterrows()]
    per_round: dict[str, list[float]] = {c["trial"]: [] for c in cands}
    calls: dict[str, list[int]] = {c["trial"]: [] for c in cands}
    orders: list[list[str]] = []
    processes = 0
    while True:
        res = remeasure.rounds_in_subprocess(cands, rounds=rounds, slot_seconds=slot_seconds)
        processes += 1
        orders += res["orders"]
        for t in per_round:
            per_round[t] += [sc.round_stat(np.asarray(ms, dtype=float), res["batch_size"][t], pct)
                             for ms in res["times_ms"][t]]
            calls[t] += [len(ms) for ms in res["times_ms"][t]]
        n = len(orders)
        if n + rounds > max(MAX_ROUNDS, rounds) or not undecided(settle(per_round, sc.direction)):
            break
        if log:
            log(f"undecided after {n} rounds (a gap over {TIE_MARGIN:.0%} whose CI includes 1): "
                f"{rounds} more rounds")
    interleaved = {"n_rounds": len(orders), "slot_seconds": slot_seconds, "orders": orders,
                   "statistic": sc.primary(pct), "rounds": per_round, "hardware_id": here,
                   "calls": calls, "processes": processes}
    interleaved["covers"] = f"across rounds (rotating order; {processes_text(interleaved)}, {rounds} rounds each)"
    path.write_text(json.dumps({"key": key, "interleaved": interleaved}, indent=2))
    return interleaved


def decide(run_dir: str | Path, remeasure: bool = True, log=None, df=None) -> dict[str, Any]:
    """Choose the recommendation of a run directory and write ``best.json``; returns it."""
    from workbench import report

    run_dir = Path(run_dir)
    info = report.run_info(run_dir)
    df = report.load_table(run_dir, extras=True) if df is None else df
    interleaved = None
    sc = scenario(info.get("scenario", "single_stream"))
    if not sc.remeasure:  # e.g. server: said in best.json
        interleaved, remeasure = {"skipped": sc.remeasure_why}, False
    best = choose(df, info, interleaved)
    if best and remeasure and len(best["candidates"]) > 1:
        cands, _, col = candidates(df, info)
        lead = cands[cands.trial.astype(str).isin(best["candidates"])]
        try:
            interleaved = remeasure_leaders(run_dir, lead, info, log)
        except WorkbenchError as err:
            interleaved = {"error": str(err)}
        best = choose(df, info, interleaved)
    doc = {"experiment": info["experiment"], "study": info["study"], "question": question(info),
           "table": table_key(df)}
    if best:
        doc.update(best)
        doc["params"] = {k: best["row"].get(k) for k in report.PARAM_COLUMNS}
        doc["summary"] = headline(df, best)
    else:
        doc.update(trial=None, reason="no completed feasible trial")
    if not sc.remeasure:
        doc["remeasure_skipped"] = sc.remeasure_why
    (run_dir / BEST_FILE).write_text(json.dumps(clean_json(doc), indent=2))
    return doc


def table_key(df) -> list[list[str]]:
    """What a decision was taken on (trials and states): a report re-decides when it changed."""
    return [[str(t), str(s)] for t, s in zip(df.trial, df.state)]


def clean_json(v):
    if isinstance(v, dict):
        return {str(k): clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return clean_json(v.item())
    return v


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
    row = df[(df.kind == "trial") & (df.trial.astype(str) == str(best["trial"]))].iloc[0]
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


def load_or_choose(run_dir: Path, df, info: dict[str, Any]) -> dict[str, Any]:
    """``best.json`` when it was decided on this table; else a decision without re-measurement
    (never times: for a report of a run nobody decided yet, e.g. a sweep stopped early)."""
    path = Path(run_dir) / BEST_FILE
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("table") == table_key(df):
            return doc
    sc = scenario(info.get("scenario", "single_stream"))
    best = choose(df, info, None if sc.remeasure else {"skipped": sc.remeasure_why})
    doc = {"experiment": info["experiment"], "study": info["study"], "question": question(info)}
    if best:
        from workbench.report import PARAM_COLUMNS

        doc.update(best, params={k: best["row"].get(k) for k in PARAM_COLUMNS},
                   summary=headline(df, best))
    else:
        doc.update(trial=None, reason="no completed feasible trial")
    return clean_json(doc)


# --- identical work is measured once ---------------------------------------------------------

REUSE_ENV = "WORKBENCH_MEASURED_DIR"
# Parameters that change how an artifact is run (everything else changes the artifact itself,
# which the content hash covers, or only the bookkeeping).
RUN_OPTIONS = ("runtime", "provider", "threads", "inter_op_threads", "graph_optimization",
               "execution_mode", "ov_hint", "ov_streams", "batch_size", "task", "data",
               "warmup", "min_runs", "min_seconds", "max_seconds", "max_accuracy_drop")


def artifact_hash(path: str | Path) -> str:
    """sha256 of an artifact's bytes (a file, or every file of a directory in path order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else "").encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def measurement_key(params: dict[str, Any], artifact_path: str | Path) -> str:
    """Same artifact bytes + same run options = the same measurement."""
    opts = {k: params.get(k) for k in RUN_OPTIONS}
    blob = json.dumps([artifact_hash(artifact_path), opts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def reusable(key: str, directory: str | Path | None = None) -> dict[str, Any] | None:
    """The metrics recorded under ``key`` in this run's measured directory, if any."""
    directory = directory or os.environ.get(REUSE_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{key}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record(run_dir: str | Path, trial_number: int, metrics: dict[str, Any]) -> None:
    """Remember a measured trial under its measurement key (called by the sweep after tell)."""
    key = metrics.get("measurement_key")
    if not key or metrics.get("reused_from") is not None or metrics.get("status") != "complete":
        return
    d = Path(run_dir) / "measured"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{key}.json"
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"trial": trial_number, "metrics": metrics}))
    tmp.replace(path)


def reuse_metrics(key: str, params_dump: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Metrics for a trial whose measurement key was measured before, marked ``reused_from``."""
    hit = reusable(key)
    if not hit:
        return None
    m = dict(hit["metrics"])
    for k in ("notebook", "notebook_seconds"):
        m.pop(k, None)
    m.update(params=params_dump, label=label, reused_from=hit["trial"], measurement_key=key)
    return m


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
