"""Paired comparison of candidates timed together: per-round ratios and their intervals.

Sweep numbers come from separate processes minutes apart; on a shared machine a p50 moves
17-26% between them while each trial's own CI is +-0.05%. Rounds pair candidates in time, so a
slow stretch of the machine hits both: A beats B only when the CI of the ratio across rounds
excludes 1 *and* the difference is over ``TIE_MARGIN``; otherwise it is a tie.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from workbench.core.errors import WorkbenchError
from workbench.core.scenarios import TIE_MARGIN


def paired_ratio(a: list[float] | np.ndarray, b: list[float] | np.ndarray,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Geometric-mean ratio a/b over paired rounds, with a t-interval on the log ratios.

    Rounds pair the two candidates in time, so a slow stretch of the machine hits both: the
    ratio is stable where the raw numbers drift.
    """
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

def geomean(values: list[float]) -> float:
    """The geometric mean of one candidate's per-round values (what the rounds compare)."""
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=float)))))


def settle(rounds: dict[str, list[float]], direction: str) -> dict[str, Any]:
    """The decision among re-measured candidates from their per-round values.

    The leader has the best geometric mean over the rounds; every candidate the leader does not
    beat (paired ratio, :func:`beats`) is tied with it. Returns the leader, the tie set and each
    candidate's ratio to the leader (candidate / leader, with its CI across rounds).
    """
    names = list(rounds)
    gm = {t: geomean(v) for t, v in rounds.items()}
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
