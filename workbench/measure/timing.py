"""The measurement protocol (DESIGN.md, "Measurement protocol").

Warm-up, then timed calls until both ``min_runs`` and ``min_seconds`` are met, capped by
``max_seconds``; each call timed with ``perf_counter_ns``. Statistics: p50/p90/p95/p99, mean, std,
coefficient of variation, a bootstrap 95% CI of the median, throughput. Timed sections hold a
machine-wide file lock so parallel workers never time concurrently.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from workbench.core.cache import file_lock
from workbench.data import inputs

# A median whose 95% CI is wider than this fraction of itself is flagged unstable.
UNSTABLE_CI_FRACTION = 0.05
BOOTSTRAP_RESAMPLES = 1000


def lock_path() -> Path:
    """One lock per machine (``$WORKBENCH_LOCK_DIR`` or the system temp dir)."""
    return Path(os.environ.get("WORKBENCH_LOCK_DIR") or tempfile.gettempdir()) / "workbench-measure.lock"


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the machine-wide measurement lock."""
    with file_lock(lock_path()):
        yield


def time_calls(fn: Callable[[], object], warmup: int, min_runs: int, min_seconds: float,
               max_seconds: float, settle: bool = True,
               clock: Callable[[], int] = time.perf_counter_ns) -> np.ndarray:
    """Per-call wall times in nanoseconds, after ``warmup`` untimed calls.

    Stops once both ``min_runs`` and ``min_seconds`` are met, unless the median is still
    unstable then (``settle``; see :func:`is_unstable`): a burst of noise from another process
    should cost more samples, not a flagged trial. Stability is re-checked each time the sample
    grows by a quarter, between timed calls, and ``max_seconds`` caps it all. ``clock`` (ns) is
    replaceable so the stopping rule can be tested on a simulated clock.
    """
    for _ in range(warmup):
        fn()
    times: list[int] = []
    start = clock()
    enough = start + int(min_seconds * 1e9)
    cap = start + int(max_seconds * 1e9)
    next_check = 0
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        if t1 >= cap:
            break
        if len(times) >= min_runs and t1 >= enough and len(times) >= next_check:
            if not settle or not is_unstable(np.asarray(times, dtype=np.float64)):
                break
            next_check = int(len(times) * 1.25) + 1
    return np.asarray(times, dtype=np.int64)


def median_ci_rank(x: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (ranks n/2 -+ z*sqrt(n)/2).

    Cheap enough (one partial sort) to evaluate inside the stopping rule; the reported CI is
    the bootstrap one.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    lo_k = max(0, int(math.floor(n / 2 - half)))
    hi_k = min(n - 1, int(math.ceil(n / 2 + half)))
    part = np.partition(x, (lo_k, hi_k))
    return float(part[lo_k]), float(part[hi_k])


def is_unstable(x: np.ndarray, fraction: float = UNSTABLE_CI_FRACTION) -> bool:
    """True when the median's CI is wider than ``fraction`` of the median."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 5:
        return True
    lo, hi = median_ci_rank(x)
    return bool((hi - lo) > fraction * float(np.median(x)))


def bootstrap_median_ci(x: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median, computed in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n = len(x)
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    medians = []
    done = 0
    while done < resamples:
        k = min(chunk, resamples - done)
        medians.append(np.median(x[rng.integers(0, n, size=(k, n))], axis=1))
        done += k
    m = np.concatenate(medians)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(m, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(times_ns: np.ndarray, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Latency statistics (ms, per batch) and throughput (samples/s)."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    lo, hi = bootstrap_median_ci(ms, seed=seed)
    return {
        "n_runs": int(len(ms)),
        "measured_seconds": float(ms.sum() / 1e3),
        "latency_p50_ms": float(p50),
        "latency_p90_ms": float(p90),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
        "latency_mean_ms": mean,
        "latency_std_ms": std,
        "latency_cv": std / mean if mean > 0 else 0.0,
        "latency_p50_ci_low_ms": lo,
        "latency_p50_ci_high_ms": hi,
        "throughput_sps": batch_size * 1e3 / mean if mean > 0 else 0.0,
        "unstable": bool((hi - lo) > UNSTABLE_CI_FRACTION * p50),
        # 201 quantiles: enough to draw the distribution without storing every sample.
        "latency_quantiles_ms": [float(v) for v in np.percentile(ms, np.linspace(0, 100, 201))],
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timing_batch(x: inputs.Inputs, batch_size: int) -> inputs.Inputs:
    """A fixed batch of real samples, prepared before timing (repeated if the split is small);
    float inputs as float32, integer and bool inputs as they are."""
    return inputs.cast_float32(inputs.repeat_to(x, batch_size))
