"""Feasibility and Pareto fronts of a results table, per hardware.

Latencies measured on two machines are not comparable, so a front is computed among the
completed feasible trials of one ``hardware_id`` at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.core.objectives import OBJECTIVES


def directions(objectives: list[str]) -> np.ndarray:
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
    sign = directions(objectives)
    cand = np.asarray(ok, dtype=bool) & complete_trials(df).to_numpy()
    for hw in df.loc[cand, "hardware_id"].dropna().unique():
        sel = cand & (df.hardware_id == hw).to_numpy()
        pts = df.loc[sel, objectives].to_numpy(dtype=float) * sign
        ok = ~np.isnan(pts).any(axis=1)
        mask = np.zeros(len(pts), dtype=bool)
        mask[ok] = pareto_mask(pts[ok])
        flags[np.flatnonzero(sel)] = mask
    return flags.tolist()

def complete_trials(df):
    return (df.kind == "trial") & (df.state == "COMPLETE")

def feasible(df, info: dict[str, Any] | None = None):
    """Accuracy feasibility as the trial recorded it, plus the scenario's latency budget."""
    ok = (df.feasible == True).to_numpy()  # noqa: E712
    budget = (info or {}).get("latency_budget_ms")
    if budget:
        col = f"latency_p{int(info.get('latency_percentile', 90))}_ms"
        ok = ok & (df[col].astype(float) <= float(budget)).to_numpy()
    return pd.Series(ok, index=df.index)
