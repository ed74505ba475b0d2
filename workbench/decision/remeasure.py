"""The interleaved re-measurement of the leading candidates, in a fresh process.

Sweep numbers come from separate kernels minutes apart; the leaders are therefore timed again
together, in one fresh process (``python -m workbench.trial.remeasure``: started by module name,
never imported here, JSON on stdin and stdout), over R >= 5 rounds in rotating order. A
comparison still undecided after R rounds (a gap over the tie margin whose CI includes 1) gets
R more rounds in another fresh process, up to :data:`MAX_ROUNDS`. The result is cached in
``remeasure.json`` for exactly these candidates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core import fingerprint
from workbench.core.errors import WorkbenchError
from workbench.core.scenarios import TIE_MARGIN, scenario
from workbench.decision.stats import settle, undecided
from workbench.results.best import processes_text

# The module that times the candidates, run as ``python -m``; decision never imports it.
CHILD = "workbench.trial.remeasure"


class RemeasureError(WorkbenchError):
    """Candidates could not be re-opened or re-measured (the recommendation then stands as is)."""


def rounds_in_subprocess(candidates: list[dict[str, Any]], rounds: int = 7, slot_seconds: float = 0.15,
                         timeout_s: float = 300.0) -> dict[str, Any]:
    """The candidates timed in ``rounds`` interleaved rounds in a fresh Python process
    (:data:`CHILD`); :class:`RemeasureError` on failure."""
    req = json.dumps({"candidates": candidates, "rounds": rounds, "slot_seconds": slot_seconds})
    try:
        proc = subprocess.run([sys.executable, "-m", CHILD], input=req,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RemeasureError(f"interleaved re-measurement took more than {timeout_s:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RemeasureError("interleaved re-measurement failed: " + (lines[-1] if lines else "?"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Interleaved rounds (R >= 5) and seconds of timed calls per candidate per round.
ROUNDS = 7

SLOT_SECONDS = 0.15

# Undecided after ROUNDS (a gap over TIE_MARGIN whose CI still includes 1): ROUNDS more, up to this.
MAX_ROUNDS = 21

REMEASURE_FILE = "remeasure.json"

def remeasure_leaders(run_dir: Path, lead, info: dict[str, Any], log=None,
                      rounds: int = ROUNDS, slot_seconds: float = SLOT_SECONDS) -> dict[str, Any]:
    """Per-round values of the primary metric for ``lead`` (rows with ``params_full``), timed
    together in a fresh process; cached in ``remeasure.json`` for exactly these candidates."""
    sc = scenario(info.get("scenario", "single_stream"))
    pct = int(info.get("latency_percentile", 90))
    here = fingerprint.collect()["hardware_id"]
    if here != lead.hardware_id.iloc[0]:
        raise RemeasureError(f"this machine ({here}) is not the hardware the candidates "
                                       f"were measured on ({lead.hardware_id.iloc[0]})")
    key = {"trials": [[str(r.trial), str(r.artifact)] for _, r in lead.iterrows()],
           "scenario": sc.name, "percentile": pct, "rounds": rounds}
    path = Path(run_dir) / REMEASURE_FILE
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["interleaved"]
    if lead.params_full.isna().any():
        raise RemeasureError(f"trials {', '.join(lead.trial)} have no recorded parameters")
    if log:
        log(f"re-measuring trials {', '.join(lead.trial)} together: {rounds} interleaved rounds")
    cands = [{"trial": str(r.trial), "params": r.params_full, "artifact": r.artifact,
              "artifact_format": r.artifact_format} for _, r in lead.iterrows()]
    per_round: dict[str, list[float]] = {c["trial"]: [] for c in cands}
    calls: dict[str, list[int]] = {c["trial"]: [] for c in cands}
    orders: list[list[str]] = []
    processes = 0
    while True:
        res = rounds_in_subprocess(cands, rounds=rounds, slot_seconds=slot_seconds)
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
