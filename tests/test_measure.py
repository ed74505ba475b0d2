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


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_rank_ci_and_instability_on_known_samples():
    x = np.arange(1, 1001, dtype=float)
    lo, hi = measure.median_ci_rank(x)
    assert lo < 500.5 < hi and hi - lo < 80  # ranks 469..531 of 1000
    assert not measure.is_unstable(np.full(100, 2.0))
    bimodal = np.array([1.0, 3.0] * 30)  # the median jumps between the modes
    assert measure.is_unstable(bimodal)


def test_keeps_measuring_while_unstable_then_stops():
    start = time.perf_counter()
    state = {"i": 0}

    def noisy_then_steady():  # 1 ms / 2 ms alternating for 0.15 s, then a steady 1 ms
        state["i"] += 1
        slow = time.perf_counter() - start < 0.15 and state["i"] % 2 == 0
        _busy(0.002 if slow else 0.001)

    settled = measure.time_calls(noisy_then_steady, warmup=0, min_runs=10, min_seconds=0.05,
                                 max_seconds=3)
    assert settled.sum() / 1e9 > 0.15  # went on past min_seconds until the median settled
    start = time.perf_counter()
    state["i"] = 0
    plain = measure.time_calls(noisy_then_steady, warmup=0, min_runs=10, min_seconds=0.05,
                               max_seconds=3, settle=False)
    assert plain.sum() / 1e9 < 0.13 and len(plain) < len(settled)


def test_unstable_until_max_seconds_is_flagged():
    state = {"i": 0}

    def always_bimodal():
        state["i"] += 1
        _busy(0.001 if state["i"] % 2 else 0.003)

    t0 = time.perf_counter()
    times = measure.time_calls(always_bimodal, warmup=0, min_runs=10, min_seconds=0.02,
                               max_seconds=0.3)
    assert 0.25 < time.perf_counter() - t0 < 1.0
    assert measure.summarize(times, 1)["unstable"]


LOCKED = """
import sys, time
from workbench import measure
with measure.exclusive():
    t0 = time.time()
    time.sleep(0.4)
    t1 = time.time()
print(t0, t1)
"""


def test_lock_serializes_two_processes(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "WORKBENCH_LOCK_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", LOCKED], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (a0, a1), (b0, b1) = spans
    assert a1 <= b0, f"timed sections overlap: {spans}"


def test_interleaved_times_alternate_and_separate_different_costs():
    order = []
    fast = lambda: (order.append("a"), _busy(0.0002))  # noqa: E731
    slow = lambda: (order.append("b"), _busy(0.0006))  # noqa: E731
    a, b = measure.interleaved_times([fast, slow], warmup=2, seconds=0.1, min_rounds=20)
    assert len(a) == len(b) >= 20
    assert order[4:10] == ["a", "b"] * 3
    assert np.median(a) < np.median(b) and measure.distinguishable(a / 1e6, b / 1e6)


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bench_reports_both_p50s_and_a_ratio_near_one(tmp_path):
    from workbench import remeasure

    r = remeasure.bench_onnx(_tiny_onnx(tmp_path / "tiny.onnx"), batch_size=8, seconds=0.2, repeats=3)
    assert r["workbench_p50_ms"] > 0 and r["bare_loop_p50_ms"] > 0
    # The target is 1.00-1.05 (benchmarks/measurement.md); a shared test machine gets slack.
    assert 0.8 < r["ratio"] < 1.3, r


def test_bench_cli_missing_model_is_one_line_error(tmp_path):
    from conftest import run_cli

    res = run_cli("bench", str(tmp_path / "nope.onnx"))
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "no such ONNX file" in res.stderr
