"""Latency statistics on known inputs, and the protocol's stopping rules on a simulated clock
(no test here depends on how fast the machine is)."""


import numpy as np
import pytest

from workbench.measure import interleaved, timing


def test_quantiles_of_known_timings():
    times_ns = (np.arange(1, 101) * 1_000_000).astype(np.int64)  # 1..100 ms
    s = timing.summarize(times_ns, batch_size=4)
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
    s = timing.summarize(np.full(60, 2_000_000, dtype=np.int64), batch_size=1)
    assert s["latency_p50_ms"] == s["latency_p99_ms"] == 2.0
    assert s["latency_cv"] == 0.0 and not s["unstable"]
    assert s["latency_p50_ci_low_ms"] == s["latency_p50_ci_high_ms"] == 2.0


def test_bootstrap_ci_covers_true_median_most_of_the_time():
    rng = np.random.default_rng(1)
    true_median = np.exp(0.0)  # lognormal(0, 0.5) has median 1
    hits = 0
    for i in range(100):
        sample = rng.lognormal(0.0, 0.5, size=200)
        lo, hi = timing.bootstrap_median_ci(sample, resamples=400, seed=i)
        hits += lo <= true_median <= hi
    assert hits >= 85  # nominal 95%


class FakeClock:
    """A simulated ``perf_counter_ns``: time moves only when a timed call says it took time."""

    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def call(self, ms: float):
        return lambda: self.advance(ms)

    def advance(self, ms: float) -> None:
        self.now += int(ms * 1e6)


def test_runs_until_min_runs_and_min_seconds():
    clock = FakeClock()
    calls = []
    times = timing.time_calls(lambda: (calls.append(1), clock.advance(1)), warmup=5, min_runs=30,
                               min_seconds=0.05, max_seconds=5, clock=clock)
    assert len(times) == 50 and len(calls) == 55  # 50 calls of 1 ms reach min_seconds
    assert (times == 1_000_000).all()


def test_min_runs_keeps_going_past_min_seconds():
    clock = FakeClock()
    times = timing.time_calls(clock.call(1), warmup=0, min_runs=80, min_seconds=0.05, max_seconds=5,
                               clock=clock)
    assert len(times) == 80


def test_min_seconds_keeps_going_past_min_runs():
    clock = FakeClock()
    times = timing.time_calls(clock.call(2), warmup=0, min_runs=1, min_seconds=0.05, max_seconds=5,
                               clock=clock)
    assert len(times) == 25


def test_max_seconds_caps_slow_calls():
    clock = FakeClock()
    times = timing.time_calls(clock.call(20), warmup=0, min_runs=10_000, min_seconds=0, max_seconds=0.1,
                               clock=clock)
    assert len(times) == 5


def test_rank_ci_and_instability_on_known_samples():
    x = np.arange(1, 1001, dtype=float)
    lo, hi = timing.median_ci_rank(x)
    assert lo < 500.5 < hi and hi - lo < 80  # ranks 469..531 of 1000
    assert not timing.is_unstable(np.full(100, 2.0))
    bimodal = np.array([1.0, 3.0] * 30)  # the median jumps between the modes
    assert timing.is_unstable(bimodal)


def test_keeps_measuring_while_unstable_then_stops():
    def noisy_then_steady(clock):  # 1 ms / 2 ms alternating for 150 ms, then a steady 1 ms
        state = {"i": 0}

        def fn():
            state["i"] += 1
            clock.advance(2 if clock.now < 150e6 and state["i"] % 2 == 0 else 1)
        return fn

    clock = FakeClock()
    settled = timing.time_calls(noisy_then_steady(clock), warmup=0, min_runs=10, min_seconds=0.05,
                                 max_seconds=3, clock=clock)
    assert settled.sum() / 1e9 > 0.15  # went on past min_seconds until the median settled
    assert not timing.summarize(settled, 1)["unstable"]
    clock = FakeClock()
    plain = timing.time_calls(noisy_then_steady(clock), warmup=0, min_runs=10, min_seconds=0.05,
                               max_seconds=3, settle=False, clock=clock)
    assert plain.sum() / 1e9 == pytest.approx(0.05, abs=0.002) and len(plain) < len(settled)


def test_unstable_until_max_seconds_is_flagged():
    clock = FakeClock()
    state = {"i": 0}

    def always_bimodal():
        state["i"] += 1
        clock.advance(1 if state["i"] % 2 else 3)

    times = timing.time_calls(always_bimodal, warmup=0, min_runs=10, min_seconds=0.02, max_seconds=0.3,
                               clock=clock)
    assert times.sum() / 1e9 == pytest.approx(0.3, abs=0.004)  # stopped by the cap, not earlier
    assert timing.summarize(times, 1)["unstable"]


LOCKED = """
import sys, time
from workbench.measure import timing as measure
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
    clock = FakeClock()
    order = []
    fast = lambda: (order.append("a"), clock.advance(0.2))  # noqa: E731
    slow = lambda: (order.append("b"), clock.advance(0.6))  # noqa: E731
    a, b = interleaved.interleaved_times([fast, slow], warmup=2, seconds=0.1, min_rounds=20, clock=clock)
    assert len(a) == len(b) == 125  # 0.8 ms per round until 0.1 s
    assert order[4:10] == ["a", "b"] * 3
    assert np.median(a) < np.median(b) and interleaved.distinguishable(a / 1e6, b / 1e6)


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
    from workbench.measure import bench

    r = bench.bench_onnx(_tiny_onnx(tmp_path / "tiny.onnx"), batch_size=8, seconds=0.2, repeats=3)
    assert r["workbench_p50_ms"] > 0 and r["bare_loop_p50_ms"] > 0 and r["calls_each"] >= 100
    assert r["ratio"] == pytest.approx(r["workbench_p50_ms"] / r["bare_loop_p50_ms"])
    lo, hi = r["workbench_p50_ci_ms"]
    assert lo <= r["workbench_p50_ms"] <= hi
    # How close the ratio is to 1 is a speed claim: benchmarks/measurement.md, not a test.


def test_bench_cli_missing_model_is_one_line_error(tmp_path):
    from conftest import run_cli

    res = run_cli("bench", str(tmp_path / "nope.onnx"))
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "no such ONNX file" in res.stderr
