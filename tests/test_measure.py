"""Latency statistics on known inputs, and the protocol's stopping rules."""

import time

import numpy as np
import pytest

from workbench import measure


def test_quantiles_of_known_timings():
    times_ns = (np.arange(1, 101) * 1_000_000).astype(np.int64)  # 1..100 ms
    s = measure.summarize(times_ns, batch_size=4)
    assert s["n_runs"] == 100
    assert s["latency_p50_ms"] == pytest.approx(50.5)
    assert s["latency_p90_ms"] == pytest.approx(90.1)
    assert s["latency_p99_ms"] == pytest.approx(99.01)
    assert s["latency_mean_ms"] == pytest.approx(50.5)
    assert s["latency_std_ms"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["latency_cv"] == pytest.approx(s["latency_std_ms"] / 50.5)
    assert s["throughput_sps"] == pytest.approx(4 / 0.0505)
    assert s["latency_p50_ci_low_ms"] <= 50.5 <= s["latency_p50_ci_high_ms"]
    assert len(s["latency_quantiles_ms"]) == 201


def test_constant_timings_have_zero_spread():
    s = measure.summarize(np.full(60, 2_000_000, dtype=np.int64), batch_size=1)
    assert s["latency_p50_ms"] == s["latency_p99_ms"] == 2.0
    assert s["latency_cv"] == 0.0 and not s["unstable"]
    assert s["latency_p50_ci_low_ms"] == s["latency_p50_ci_high_ms"] == 2.0


def test_bootstrap_ci_covers_true_median_most_of_the_time():
    rng = np.random.default_rng(1)
    true_median = np.exp(0.0)  # lognormal(0, 0.5) has median 1
    hits = 0
    for i in range(100):
        sample = rng.lognormal(0.0, 0.5, size=200)
        lo, hi = measure.bootstrap_median_ci(sample, resamples=400, seed=i)
        hits += lo <= true_median <= hi
    assert hits >= 85  # nominal 95%


def test_runs_until_min_runs_and_min_seconds():
    calls = []
    times = measure.time_calls(lambda: calls.append(1), warmup=5, min_runs=30, min_seconds=0.05,
                               max_seconds=5)
    assert len(times) >= 30 and len(calls) == len(times) + 5
    assert times.sum() <= (0.05 + 1) * 1e9


def test_min_seconds_keeps_going_past_min_runs():
    times = measure.time_calls(lambda: time.sleep(0.002), warmup=0, min_runs=1, min_seconds=0.05,
                               max_seconds=5)
    assert len(times) > 5  # ~25 calls of 2 ms


def test_max_seconds_caps_slow_calls():
    t0 = time.perf_counter()
    times = measure.time_calls(lambda: time.sleep(0.02), warmup=0, min_runs=10_000, min_seconds=0,
                               max_seconds=0.1)
    assert len(times) < 20 and time.perf_counter() - t0 < 1.0
