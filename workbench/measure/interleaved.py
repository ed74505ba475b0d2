"""Several candidates timed together: interleaved calls and rotating rounds.

Interleaving exposes every candidate to the same slow drifts of a shared machine (another
process starting, frequency changes), which separate measurements minutes apart do not. The
re-measurement of a decision's leaders (``python -m workbench.trial.remeasure``) opens the
candidates and times them with :func:`interleave_rounds`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.measure import timing
from workbench.measure.timing import bootstrap_median_ci


def interleaved_times(fns: list[Callable[[], object]], warmup: int, seconds: float,
                      min_rounds: int = 20, clock: Callable[[], int] = time.perf_counter_ns) -> list[np.ndarray]:
    """Per-call times (ns) of several callables timed in turn (A, B, A, B, ...).

    Interleaving exposes every candidate to the same slow drifts of a shared machine (another
    process starting, frequency changes), which separate measurements minutes apart do not.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[int]] = [[] for _ in fns]
    end = clock() + int(seconds * 1e9)
    rounds = 0
    while rounds < min_rounds or clock() < end:
        for fn, out in zip(fns, times):
            t0 = clock()
            fn()
            out.append(clock() - t0)
        rounds += 1
    return [np.asarray(t, dtype=np.int64) for t in times]


def distinguishable(a_ms: np.ndarray, b_ms: np.ndarray, seed: int = 0) -> bool:
    """True when the bootstrap 95% CIs of the two medians do not overlap."""
    alo, ahi = bootstrap_median_ci(np.asarray(a_ms, dtype=np.float64), seed=seed)
    blo, bhi = bootstrap_median_ci(np.asarray(b_ms, dtype=np.float64), seed=seed)
    return bool(ahi < blo or bhi < alo)


def interleave_rounds(fns: dict[str, Callable[[], object]], rounds: int = 7, slot_seconds: float = 0.15,
                      warmup: int = 10, min_calls: int = 20) -> dict[str, Any]:
    """Time the callables ``fns`` (by name) in ``rounds`` rounds, in rotating order.

    In round ``r`` the candidates are timed one after the other starting with candidate
    ``r mod k``, each for ``slot_seconds`` (and at least ``min_calls`` calls), so every
    candidate is exposed to the same stretches of a drifting machine and pairs round by round
    with every other. Returns per-call times (ms) per round and the orders.
    """
    if rounds < 2:
        raise WorkbenchError("an interleaved re-measurement needs at least two rounds")
    names = list(fns)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    orders = []
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    with timing.exclusive():
        for r in range(rounds):
            k = r % len(names)
            order = names[k:] + names[:k]
            orders.append(order)
            for n in order:
                t = timing.time_calls(fns[n], warmup=1, min_runs=min_calls, min_seconds=slot_seconds,
                                      max_seconds=max(slot_seconds * 10, 1.0), settle=False)
                times[n].append((t / 1e6).tolist())
    return {"times_ms": times, "orders": orders}
