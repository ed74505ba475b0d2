"""Which trial answers the question: candidates, the leaders worth re-measuring, and the choice.

* Candidates are completed, feasible trials (accuracy drop within bounds, latency budget met)
  on one hardware (``hardware_id``), on the Pareto front of the declared objectives computed
  on that hardware or within ``LEAD_MARGIN`` of the best (:func:`candidates`), that answer the
  scenario's question (single_stream: batch 1).
* The leading candidates (every candidate within :data:`LEAD_MARGIN` of the best, at least 2,
  at most :data:`MAX_LEADERS`) are compared on their interleaved re-measurement
  (``workbench.decision.remeasure``) by paired per-round ratios (``workbench.decision.stats``);
  without one (server trials, or it failed), every leader within ``TIE_MARGIN`` of the best is
  tied, and the reason says so. Among tied candidates the smallest, simplest artifact wins, on
  the fewest threads.
* Never worse than doing nothing: the fastest feasible fp32 baseline at the same batch size
  and hardware takes part. When the chosen trial does not beat it beyond ``TIE_MARGIN`` (on the
  interleaved re-measurement when the baseline was re-measured with the leaders, else on the
  sweep's numbers), or no trial is feasible, the recommendation is to keep that baseline, and
  says so in words (``keep onnxruntime fp32, 2 threads: nothing tried is faster``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.core.scenarios import TIE_MARGIN, question, scenario
from workbench.decision.stats import beats, geomean, paired_ratio, settle
from workbench.results.best import clean, processes_text
from workbench.results.pareto import complete_trials, feasible, pareto_flags

# Leading candidates: within this fraction of the best on the primary metric ... (wider than
# the 10% first planned: a 20 us model's p90 moves by a factor of 1.3 between one-second windows
# on a shared 2-core VM, so a 10% cut on sweep numbers too often left the true best out;
# re-measuring five candidates costs seconds. benchmarks/decision.md)
LEAD_MARGIN = 0.25

# ... at most this many (at least two when there are two).
MAX_LEADERS = 5

def simplicity(row) -> int:
    """Fewer transforms is simpler: fp32 < fp16 < int8 < int4, pruning adds one."""
    bits = row.get("bits") if isinstance(row, dict) else row.bits
    sparsity = row.get("sparsity") if isinstance(row, dict) else row.sparsity
    bits = 32 if bits is None or bits != bits else int(bits)
    return {32: 0, 16: 1, 8: 2, 4: 3}.get(bits, 3) + (1 if sparsity else 0)

def candidates(df, info: dict[str, Any]):
    """Rows that may be recommended, best first by the primary metric, and their hardware.

    Completed, feasible, on the most common hardware, answering the scenario (batch 1 for
    single_stream); on the Pareto front of the declared objectives on that hardware, or within
    :data:`LEAD_MARGIN` of the best on the primary metric. The front alone is decided by each
    trial's one timing in the sweep: two configurations equal in accuracy and size (OpenVINO fp16
    at one and at two threads) are told apart by speed only, and a noisy minute dropped the
    faster one from the front before the leaders were re-measured (rapidocr's classifier:
    onnxruntime fp32 kept where OpenVINO fp16 at one thread was 1.35x faster;
    benchmarks/real_models.md). The re-measurement of the leaders, not the sweep, ranks them.
    """
    sc = scenario(info.get("scenario", "single_stream"))
    col = sc.primary(int(info.get("latency_percentile", 90)))
    feas = feasible(df, info)
    base = complete_trials(df).to_numpy() & feas.to_numpy()
    pool = df[base]
    if pool.empty:
        return pool, None, col
    hw = pool.hardware_id.mode().iloc[0] if pool.hardware_id.notna().any() else None
    sel = base & df[col].notna().to_numpy()
    if hw is not None:
        sel &= (df.hardware_id == hw).to_numpy()
    if sc.batch_one:  # one sample at a time: batch 1, or the smallest size an experiment fixed
        sel &= (df.batch_size == pool.batch_size.min()).to_numpy()
    keep = sel & np.array(pareto_flags(df, info["objectives"], feas), dtype=bool)
    if sel.any():  # near the best: the sweep's one timing of each cannot rank them (docstring)
        vals = df[col].astype(float)
        best = vals[sel].min() if sc.direction == "minimize" else vals[sel].max()
        near = (vals <= best * (1 + LEAD_MARGIN) if sc.direction == "minimize"
                else vals >= best / (1 + LEAD_MARGIN)).to_numpy()
        keep |= sel & near
    out = df[keep]
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


def pick_simplest(rows) -> Any:
    """Among tied rows, the smallest artifact, then the simplest, then the one using fewer
    threads (as fast on fewer cores leaves the others to the rest of the machine), then the
    best listed first."""
    threads = rows["threads"] if "threads" in rows else None
    rows = rows.assign(_simplicity=[simplicity(r) for _, r in rows.iterrows()], _order=range(len(rows)),
                       _threads=1 if threads is None else threads.astype(float).fillna(1))
    return rows.sort_values(["size_bytes", "_simplicity", "_threads", "_order"]).iloc[0]

def fastest_baseline(df, info: dict[str, Any], hw, batch: int | None, col: str):
    """The fastest feasible baseline row on hardware ``hw`` at ``batch`` (None: any), or None.
    A server run has none: its baselines are timed in-process, not served under load."""
    sc = scenario(info.get("scenario", "single_stream"))
    if sc.name == "server" or col not in df:
        return None
    sel = (df.kind == "baseline").to_numpy() & feasible(df, info).to_numpy() & df[col].notna().to_numpy()
    if hw is not None:
        sel &= (df.hardware_id == hw).to_numpy()
    if batch is not None:
        sel &= (df.batch_size == batch).to_numpy()
    rows = df[sel].sort_values(col, ascending=sc.direction == "minimize")
    return None if rows.empty else rows.iloc[0]


def keep_text(base) -> str:
    """"keep onnxruntime fp32, 2 threads" for a baseline row."""
    threads = int(base.threads) if base.threads == base.threads and base.threads is not None else 1
    return f"keep {base.runtime} fp32, {threads} thread{'s' if threads != 1 else ''}"


def _keep_baseline(base, info: dict[str, Any], col: str, why: str, extra: dict[str, Any]) -> dict[str, Any]:
    sc = scenario(info.get("scenario", "single_stream"))
    batch = int(base.batch_size) if sc.batch_one else None
    return {"scenario": sc.name, "primary_metric": col, "direction": sc.direction,
            "hardware_id": base.hardware_id, "candidates": [], **extra,
            "question": question(info, batch), "trial": str(base.trial), "label": base.label, "keep_baseline": True,
            "reason": f"{keep_text(base)}: {why}", "tie": False, "tied_with": [],
            "primary_value": float(base[col]),
            "row": clean(base.drop(labels=[c for c in ("latency_quantiles_ms", "params_full")
                                           if c in base.index]).to_dict())}


def choose(df, info: dict[str, Any], interleaved: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The recommendation of table ``df`` (``workbench.results.table.load_table(..., extras=True)``).

    With ``interleaved`` (from :func:`remeasure_leaders`) the leaders are compared by paired
    per-round ratios; without it (no re-measurement possible) every leader within
    :data:`TIE_MARGIN` of the best counts as tied, and the reason says so.
    """
    sc = scenario(info.get("scenario", "single_stream"))
    cands, hw, col = candidates(df, info)
    if cands.empty:
        fallback = fastest_baseline(df, info, None, None, col) if "kind" in df else None
        if fallback is None:
            return None
        return _keep_baseline(fallback, info, col, "no trial is feasible", {"decided_by": "sweep measurements"})
    lead = leaders(cands, col, sc.direction)
    batch = int(cands.batch_size.iloc[0]) if sc.batch_one else None
    ref = fastest_baseline(df, info, hw, batch if sc.batch_one else None, col)
    base = {"scenario": sc.name, "question": question(info, batch), "primary_metric": col,
            "direction": sc.direction, "hardware_id": hw,
            "candidates": [str(t) for t in lead.trial]}
    if ref is not None:
        base["baseline"] = str(ref.trial)
    if interleaved and "rounds" in interleaved:
        got = settle({t: interleaved["rounds"][t] for t in lead.trial.astype(str)}, sc.direction)
        tied = lead[lead.trial.astype(str).isin(got["tied"])]
        decided_by = "interleaved re-measurement"
        leader = got["leader"]
        # every candidate timed in the rounds (the fastest baseline too) has its geometric mean
        detail = {**interleaved, **got, "geomean": {t: geomean(v) for t, v in interleaved["rounds"].items()}}
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
        how = "the only feasible candidate that answers the question"
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
               f"the others are within {TIE_MARGIN:.0%} of it, or further but not surely worse: the 95% CI "
               f"of their ratio includes 1); the smallest, simplest artifact on the fewest threads "
               f"wins; {how}")
    out = {**base, "trial": str(winner.trial), "label": winner.label, "reason": why,
           "tie": len(tied) > 1, "tied_with": others, "decided_by": decided_by,
           "primary_value": value,
           "row": clean(winner.drop(labels=[c for c in ("latency_quantiles_ms", "params_full")
                                            if c in winner.index]).to_dict())}
    if detail is not None:
        out["interleaved"] = detail
    if ref is not None:  # single_stream: at the same batch; offline: samples/s at any batch
        ours, theirs = value, float(ref[col])
        rounds = (interleaved or {}).get("rounds") or {}
        if str(ref.trial) in rounds and str(winner.trial) in rounds:  # timed together: paired
            r = paired_ratio(rounds[str(winner.trial)], rounds[str(ref.trial)])
            theirs = ours / r[0]
            faster = beats(r, sc.direction)
            short = (f"ratio {r[0]:.2f}, 95% CI {r[1]:.2f} - {r[2]:.2f} over the paired rounds; faster needs "
                     f"the CI clear of 1 and a gap over {TIE_MARGIN:.0%}")
        else:
            faster = (ours < theirs / (1 + TIE_MARGIN) if sc.direction == "minimize"
                      else ours > theirs * (1 + TIE_MARGIN))
            short = f"not better by more than {TIE_MARGIN:.0%}"
        if not faster:
            why = (f"nothing tried is faster (best trial {winner.trial}, {winner.label}: {ours:.4g} {unit} "
                   f"against {theirs:.4g} {unit}, {short}; {how})")
            return _keep_baseline(ref, info, col, why, {**base, "decided_by": decided_by,
                                                         "best_trial": str(winner.trial),
                                                         **({"interleaved": detail} if detail else {})})
    return out

