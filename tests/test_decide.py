"""The decision on constructed inputs: scenarios, Pareto fronts per hardware, leading
candidates, paired per-round ratios, ties, and reuse of identical measurements."""

import json

import numpy as np
import pandas as pd
import pytest

from workbench import config
from workbench.core.errors import WorkbenchError
from workbench.decision import choose, stats
from workbench.decision import remeasure as remeasure_mod
from workbench.measure import reuse
from workbench.results import pareto, table
from workbench.core.errors import ConfigError
from workbench.core.scenarios import TIE_MARGIN

INFO = {"experiment": "x", "study": "x", "objectives": ["accuracy", "latency_p90_ms", "size_bytes"],
        "max_accuracy_drop": 1.0, "scenario": "single_stream", "latency_percentile": 90}


def _table(rows):
    cols = {c: None for c in table.COLUMNS + table.EXTRA_COLUMNS}
    out = []
    for i, r in enumerate(rows):
        base = {**cols, "trial": str(i), "kind": "trial", "state": "COMPLETE", "label": f"t{i}",
                "feasible": True, "hardware_id": "h", "batch_size": 1, "sparsity": 0.0, "bits": 32,
                "accuracy": 98.0, "accuracy_drop": 0.0, "size_bytes": 1000, "throughput_sps": None}
        base.update(r)
        if base["throughput_sps"] is None and base.get("latency_p90_ms"):
            base["throughput_sps"] = base["batch_size"] * 1e3 / base["latency_p90_ms"]
        out.append(base)
    return pd.DataFrame(out)


def test_issue_12_batch_32_is_not_the_single_stream_answer():
    # Trial 0 is the old recommendation (lowest p50 *per sample*, batch 32); trial 1 (int8
    # static, batch 1) dominates the batch-1 fp32 trial 2 and is the single_stream answer.
    df = _table([
        dict(bits=32, batch_size=32, latency_p50_ms=0.40, latency_p90_ms=0.414, size_bytes=400_000),
        dict(bits=8, batch_size=1, latency_p50_ms=0.05, latency_p90_ms=0.06, size_bytes=110_000, accuracy=97.8),
        dict(bits=32, batch_size=1, latency_p50_ms=0.08, latency_p90_ms=0.09, size_bytes=400_000, accuracy=97.7),
    ])
    best = choose.choose(df, INFO)
    assert best["trial"] == "1" and best["scenario"] == "single_stream"
    assert best["question"] == "single_stream: lowest p90 latency at batch 1, accuracy drop <= 1 pt"
    assert pareto.pareto_flags(df, INFO["objectives"])[1]


def test_pareto_front_is_computed_per_hardware():
    df = _table([
        dict(latency_p90_ms=1.0, size_bytes=100, hardware_id="a"),
        dict(latency_p90_ms=2.0, size_bytes=200, hardware_id="a"),   # dominated on a
        dict(latency_p90_ms=3.0, size_bytes=300, hardware_id="b"),   # alone on b: on b's front
        dict(latency_p90_ms=0.5, size_bytes=50, hardware_id="a", feasible=False),  # infeasible
    ])
    assert pareto.pareto_flags(df, INFO["objectives"]) == [True, False, True, False]
    best = choose.choose(df, INFO)
    assert best["hardware_id"] == "a" and best["trial"] == "0"


def test_pareto_mask_on_known_points():
    pts = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [2, 2]], dtype=float)
    assert pareto.pareto_mask(pts).tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("seed", range(25))
def test_recommendation_is_on_the_front_or_within_the_noise_of_the_best(seed):
    # the front is drawn from one timing per trial: a row within LEAD_MARGIN of the best answer
    # stays a candidate (its re-measurement decides), one further away and off the front never
    rng = np.random.default_rng(seed)
    n = 12
    df = _table([dict(bits=int(rng.choice([32, 16, 8])), batch_size=int(rng.choice([1, 1, 8])),
                      latency_p90_ms=float(rng.uniform(0.1, 1.0)), accuracy=float(rng.uniform(96, 98)),
                      size_bytes=int(rng.integers(1000, 5000)), feasible=bool(rng.random() > 0.2),
                      hardware_id=str(rng.choice(["a", "b"])))
                 for _ in range(n)])
    for scenario, objectives in (("single_stream", INFO["objectives"]),
                                 ("offline", ["accuracy", "throughput_sps", "size_bytes"]),
                                 ("offline", INFO["objectives"])):  # declared objectives differ
        info = {**INFO, "scenario": scenario, "objectives": objectives}
        best = choose.choose(df, info)
        if best is None:
            continue
        i = int(best["trial"])
        col, minimize = best["primary_metric"], best["direction"] == "minimize"
        same = df[df.feasible & (df.hardware_id == best["hardware_id"])]
        if scenario == "single_stream":
            same = same[same.batch_size == same.batch_size.min()]
        top = same[col].min() if minimize else same[col].max()
        margin = 1 + choose.LEAD_MARGIN
        near = df[col][i] <= top * margin if minimize else df[col][i] >= top / margin
        assert pareto.pareto_flags(df, objectives)[i] or near
        assert df.hardware_id[i] == best["hardware_id"] and df.feasible[i]
        if scenario == "single_stream":
            assert df.batch_size[i] == 1


def test_offline_ranks_by_throughput():
    df = _table([
        dict(batch_size=1, latency_p90_ms=0.1, throughput_sps=9_000, size_bytes=500),  # on the front
        dict(batch_size=32, latency_p90_ms=1.0, throughput_sps=40_000),
    ])
    info = {**INFO, "scenario": "offline", "objectives": ["accuracy", "throughput_sps", "size_bytes"]}
    best = choose.choose(df, info)
    assert best["trial"] == "1" and best["primary_metric"] == "throughput_sps"
    assert best["candidates"] == ["1", "0"]  # at least two leaders, best first


def test_single_stream_with_a_fixed_batch_answers_at_the_smallest():
    df = _table([dict(batch_size=4, latency_p90_ms=0.5), dict(batch_size=8, latency_p90_ms=0.6, size_bytes=10)])
    best = choose.choose(df, INFO)
    assert best["trial"] == "0" and "at batch 4 (the smallest measured)" in best["question"]


def test_latency_budget_makes_slow_trials_infeasible():
    df = _table([dict(latency_p90_ms=0.5, size_bytes=100), dict(latency_p90_ms=0.2, size_bytes=900)])
    assert choose.choose(df, {**INFO, "latency_budget_ms": 0.3})["trial"] == "1"
    assert choose.choose(df, {**INFO, "latency_budget_ms": 0.1}) is None


def test_leaders_within_the_margin_at_least_two_at_most_five():
    assert choose.LEAD_MARGIN >= 0.10  # every candidate within 10% is always among them
    vals = [1.0, 1.05, 1.09, 1.0 + choose.LEAD_MARGIN * 0.99, 1.0 + choose.LEAD_MARGIN * 1.01, 1.5]
    df = _table([dict(latency_p90_ms=v) for v in vals]).sort_values("latency_p90_ms")
    assert list(choose.leaders(df, "latency_p90_ms", "minimize").trial) == ["0", "1", "2", "3"]
    tput = _table([dict(throughput_sps=v) for v in (100.0, 100 / (1 + choose.LEAD_MARGIN * 0.99), 70.0)])
    assert list(choose.leaders(tput, "throughput_sps", "maximize").trial) == ["0", "1"]
    far = _table([dict(latency_p90_ms=v) for v in (1.0, 3.0)])
    assert len(choose.leaders(far, "latency_p90_ms", "minimize")) == 2
    many = _table([dict(latency_p90_ms=1 + i / 1000) for i in range(9)])
    assert len(choose.leaders(many, "latency_p90_ms", "minimize")) == choose.MAX_LEADERS


def test_paired_ratio_of_known_rounds():
    a = [2.0, 4.0, 2.2, 3.0, 2.5]  # the machine drifts by 2x between rounds ...
    b = [1.0, 2.0, 1.1, 1.5, 1.25]  # ... and the ratio stays exactly 2
    est, lo, hi = stats.paired_ratio(a, b)
    assert est == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    drift = np.exp(rng.normal(0, 0.2, 7))
    noise = np.exp(rng.normal(0, 0.01, 7))
    est, lo, hi = stats.paired_ratio(1.1 * drift * noise, drift)
    assert lo < est < hi and lo > 1.0 and est == pytest.approx(1.1, rel=0.03)
    # Unpaired, the same numbers overlap completely: pairing is what separates them.
    assert min(1.1 * drift * noise) < max(drift)
    with pytest.raises(WorkbenchError):
        stats.paired_ratio([1.0], [1.0])


def test_beats_needs_ci_excluding_one_and_more_than_two_percent():
    assert stats.beats((0.90, 0.88, 0.92), "minimize")
    assert not stats.beats((0.99, 0.985, 0.995), "minimize")  # excludes 1, but only 1%
    assert not stats.beats((0.90, 0.80, 1.01), "minimize")    # CI includes 1
    assert stats.beats((1.10, 1.05, 1.15), "maximize")
    assert not stats.beats((1.10, 1.05, 1.15), "minimize")


def test_settle_and_choose_on_rounds_tie_goes_to_smallest_simplest():
    df = _table([
        dict(bits=32, latency_p90_ms=1.00, size_bytes=400),
        dict(bits=8, latency_p90_ms=1.02, size_bytes=100),
        dict(bits=16, latency_p90_ms=1.08, size_bytes=200, accuracy=98.5),
    ])
    base = np.array([1.0, 1.3, 0.9, 1.1, 1.2, 1.0, 0.95])
    rounds = {"0": (base * 1.00).tolist(), "1": (base * 1.01).tolist(), "2": (base * 1.10).tolist()}
    got = stats.settle(rounds, "minimize")
    assert got["leader"] == "0" and sorted(got["tied"]) == ["0", "1"]
    best = choose.choose(df, INFO, {"rounds": rounds, "n_rounds": 7})
    assert best["decided_by"] == "interleaved re-measurement"
    assert best["trial"] == "1" and best["tie"] and best["tied_with"] == ["0"]
    assert best["interleaved"]["ratios"]["2"]["ci"][0] > 1.0


def test_choose_clear_winner_on_rounds():
    df = _table([dict(latency_p90_ms=1.00, size_bytes=400), dict(latency_p90_ms=1.05, size_bytes=100)])
    base = np.array([1.0, 1.2, 0.9, 1.1, 1.0])
    # The sweep said 0 was faster; measured together, 1 is 20% faster in every round.
    rounds = {"0": (base * 1.2).tolist(), "1": base.tolist()}
    best = choose.choose(df, INFO, {"rounds": rounds, "n_rounds": 5})
    assert best["trial"] == "1" and not best["tie"] and "beats trials 0" in best["reason"]


def test_a_twin_off_the_front_by_noise_is_still_re_measured():
    # rapidocr's classifier: OpenVINO fp16 at 1 and at 2 threads, equal in accuracy and size,
    # the 1-thread trial timed in a noisy minute: off the front, it must still be a leader, and
    # the rounds (where it is the faster) decide
    df = _table([dict(label="ov fp16 t2", threads=2, bits=16, latency_p90_ms=0.78, size_bytes=400),
                 dict(label="ov fp16 t1", threads=1, bits=16, latency_p90_ms=0.88, size_bytes=400),
                 dict(label="ort fp32 t1", threads=1, latency_p90_ms=0.87, size_bytes=600),
                 dict(label="ort int8 t1", threads=1, bits=8, latency_p90_ms=1.5, size_bytes=200, accuracy=97.5)])
    assert pareto.pareto_flags(df, INFO["objectives"]) == [True, False, False, True]
    cands, _, col = choose.candidates(df, INFO)
    assert set(cands.trial) == {"0", "1", "2", "3"}  # 3: on the front; 1, 2: within the margin
    assert list(choose.leaders(cands, col, "minimize").trial) == ["0", "2", "1"]
    base = np.array([0.6, 0.65, 0.7, 0.62, 0.61, 0.66, 0.6])
    rounds = {"0": (base * 1.3).tolist(), "1": base.tolist(), "2": (base * 1.4).tolist()}
    best = choose.choose(df, INFO, {"rounds": rounds, "n_rounds": 7})
    assert best["trial"] == "1" and not best["tie"]


def test_a_tie_between_thread_counts_goes_to_fewer_threads():
    df = _table([dict(threads=2, latency_p90_ms=0.58, size_bytes=400),
                 dict(threads=1, latency_p90_ms=0.59, size_bytes=400)])
    base = np.array([0.6, 0.65, 0.7, 0.62, 0.61, 0.66, 0.6])
    rounds = {"0": base.tolist(), "1": (base * 1.005).tolist()}
    best = choose.choose(df, INFO, {"rounds": rounds, "n_rounds": 7})
    assert best["tie"] and best["trial"] == "1"


def test_without_rounds_close_leaders_tie_and_reason_says_so():
    df = _table([dict(bits=32, latency_p90_ms=1.000, size_bytes=400),
                 dict(bits=8, latency_p90_ms=1.010, size_bytes=100)])
    best = choose.choose(df, INFO, {"error": "no such machine"})
    assert best["trial"] == "1" and best["decided_by"] == "sweep measurements"
    assert "no such machine" in best["reason"]


def test_scenarios_in_config():
    exp = config.parse({"name": "x"})
    assert exp.scenario == "single_stream" and exp.objectives == ["accuracy", "latency_p90_ms", "size_bytes"]
    assert config.parse({"name": "x", "latency_percentile": 99}).objectives[1] == "latency_p99_ms"
    assert config.parse({"name": "x", "scenario": "offline"}).objectives[1] == "throughput_sps"
    mine = config.parse({"name": "x", "scenario": "offline", "objectives": ["accuracy", "latency_p50_ms"]})
    assert mine.objectives == ["accuracy", "latency_p50_ms"]
    for bad, where in (({"scenario": "server"}, "slo_ms: required"), ({"scenario": "nope"}, "unknown"),
                       ({"latency_percentile": 80}, "latency_percentile")):
        with pytest.raises(ConfigError, match=where):
            config.parse({"name": "x", **bad})


def test_identical_artifacts_share_one_measurement(tmp_path, monkeypatch):
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other bytes")
    p = {"runtime": "litert", "threads": 1, "batch_size": 1, "per_channel": False}
    key = reuse.measurement_key(p, a)
    assert reuse.measurement_key({**p, "per_channel": True}, b) == key  # not a run option
    assert reuse.measurement_key(p, c) != key
    assert reuse.measurement_key({**p, "threads": 2}, a) != key
    run_dir = tmp_path / "run"
    reuse.record(run_dir, 3, {"status": "complete", "measurement_key": key, "latency_p90_ms": 0.1,
                               "notebook": "nb"})
    monkeypatch.setenv(reuse.REUSE_ENV, str(run_dir / "measured"))
    m = reuse.reuse_metrics(key, {"per_channel": True}, "label")
    assert m["reused_from"] == 3 and m["latency_p90_ms"] == 0.1 and "notebook" not in m
    assert m["params"] == {"per_channel": True}
    assert reuse.reuse_metrics(reuse.measurement_key(p, c), {}, "x") is None


@pytest.mark.slow
def test_sweep_measures_an_identical_artifact_once(tmp_path, plugin):
    # A plug-in parameter that changes no byte (tests/plugins/same_bytes.py): the second trial
    # reuses the first's measurement instead of timing the same bytes again.
    import os

    from workbench import sweep

    plugin("same_bytes.py", "wb_test_same_bytes")
    path = tmp_path / "reuse.yaml"
    path.write_text("\n".join([
        "name: reuse", "sampler: grid", "max_accuracy_drop: 5.0",
        "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}",
        "search_space:", "  bits: 8", "  int8_mode: static", "  label_only: [1, 2]",
        "  runtime: onnxruntime", "  threads: 1"]) + "\n")
    exp = config.load(path)
    before = os.environ.get(reuse.REUSE_ENV)
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    # the sweep's measurements are not handed to what this process runs next
    assert os.environ.get(reuse.REUSE_ENV) == before
    df = table.load_table(run_dir)
    trials = df[df.kind == "trial"].set_index("trial")
    assert len(trials) == 2 and (trials.state == "COMPLETE").all()
    assert pd.isna(trials.loc["0", "reused_from"]) and int(trials.loc["1", "reused_from"]) == 0
    assert trials.loc["1", "latency_p90_ms"] == trials.loc["0", "latency_p90_ms"]
    assert len(list((run_dir / "measured").glob("*.json"))) == 1


def test_undecided_only_for_a_gap_over_the_margin_whose_ci_includes_one():
    base = np.array([1.0, 1.3, 0.9, 1.1, 1.2, 1.0, 0.95])
    noisy = base * np.array([1.10, 0.98, 1.12, 0.97, 1.09, 1.00, 1.08])  # ~5% slower, noisy
    assert stats.undecided(stats.settle({"a": base.tolist(), "b": noisy.tolist()}, "minimize"))
    assert not stats.undecided(stats.settle({"a": base.tolist(), "b": (base * 1.01).tolist()}, "minimize"))
    assert not stats.undecided(stats.settle({"a": base.tolist(), "b": (base * 1.2).tolist()}, "minimize"))


def _fake_rounds(ratios, calls):
    """A stand-in for the re-measurement process: trial 1 takes ``ratios`` times trial 0's
    time, round by round, on a machine drifting by 2x."""
    def fake(cands, rounds, slot_seconds):
        calls.append(rounds)
        drift = np.resize([1.0, 2.0, 1.3, 0.8, 1.5], rounds)
        b = drift * np.resize(ratios, rounds)
        return {"times_ms": {"0": [[v] * 20 for v in drift], "1": [[v] * 20 for v in b]},
                "orders": [["0", "1"] if r % 2 == 0 else ["1", "0"] for r in range(rounds)],
                "batch_size": {"0": 1, "1": 1}}
    return fake


def test_an_undecided_comparison_gets_more_rounds(tmp_path, monkeypatch):
    from workbench.core import fingerprint

    here = fingerprint.collect()["hardware_id"]
    lead = _table([dict(latency_p90_ms=1.00, hardware_id=here, params_full={}, artifact="a"),
                   dict(latency_p90_ms=1.04, hardware_id=here, params_full={}, artifact="b")])
    calls = []
    # About 4% slower but noisy: 7 rounds cannot tell (CI includes 1), 14 can.
    noisy = [1.12, 0.98, 1.10, 0.97, 1.09, 1.00, 1.06]
    monkeypatch.setattr(remeasure_mod, "rounds_in_subprocess", _fake_rounds(noisy, calls))
    first7 = stats.settle({"0": [1.0] * 7, "1": noisy}, "minimize")
    assert stats.undecided(first7) and "1" in first7["tied"]
    inter = remeasure_mod.remeasure_leaders(tmp_path, lead, INFO, rounds=7)
    assert calls == [7, 7] and inter["n_rounds"] == 14 and inter["processes"] == 2
    assert all(len(v) == 14 for v in inter["rounds"].values()) and len(inter["orders"]) == 14
    assert stats.settle(inter["rounds"], "minimize")["tied"] == ["0"]  # now 0 beats 1

    # Never more than MAX_ROUNDS: a gap that stays undecided ends as a tie.
    calls.clear()
    (tmp_path / "b").mkdir()
    undecidable = [1.3, 0.8, 1.25, 0.85, 1.2, 0.82, 1.1]
    monkeypatch.setattr(remeasure_mod, "rounds_in_subprocess", _fake_rounds(undecidable, calls))
    inter = remeasure_mod.remeasure_leaders(tmp_path / "b", lead, INFO, rounds=7)
    assert sum(calls) == inter["n_rounds"] <= remeasure_mod.MAX_ROUNDS and len(calls) == remeasure_mod.MAX_ROUNDS // 7

    # Decided at once (2x): one process.
    calls.clear()
    (tmp_path / "c").mkdir()
    monkeypatch.setattr(remeasure_mod, "rounds_in_subprocess", _fake_rounds([2.0], calls))
    assert remeasure_mod.remeasure_leaders(tmp_path / "c", lead, INFO, rounds=7)["processes"] == 1 and calls == [7]


def _with_baseline(trials, base_p90, threads=2):
    """Trials plus the fp32 ONNX baseline at ``base_p90`` (what the sweep measured first)."""
    df = _table(trials + [dict(latency_p90_ms=base_p90, size_bytes=4000)])
    last = df.index[-1]
    df.loc[last, ["trial", "kind", "state", "label", "runtime", "threads"]] = [
        "baseline:onnx-fp32:b1", "baseline", "BASELINE", f"onnxruntime fp32 b1 t{threads}", "onnxruntime", threads]
    return df


def test_nothing_faster_than_the_baseline_keeps_the_baseline():
    base = 1.0
    df = _with_baseline([dict(bits=16, latency_p90_ms=base / (1 + TIE_MARGIN / 2), size_bytes=2000)], base)
    best = choose.choose(df, INFO)
    assert best["trial"] == "baseline:onnx-fp32:b1" and best["keep_baseline"]
    assert best["reason"].startswith("keep onnxruntime fp32, 2 threads: nothing tried is faster")
    assert best["best_trial"] == "0"
    # slower than doing nothing: the same answer
    assert choose.choose(_with_baseline([dict(latency_p90_ms=base * 1.08)], base), INFO)["keep_baseline"]


def test_a_trial_faster_beyond_the_margin_beats_the_baseline():
    base = 1.0
    best = choose.choose(_with_baseline([dict(bits=8, latency_p90_ms=base / 2)], base), INFO)
    assert best["trial"] == "0" and not best.get("keep_baseline")
    assert best["baseline"] == "baseline:onnx-fp32:b1"


def test_the_baseline_timed_with_the_leaders_decides_on_paired_rounds():
    # the sweep's numbers say 2x faster, the rounds timed together say the same speed: kept
    rng = np.random.default_rng(0)
    rounds = (1.0 + 0.01 * rng.standard_normal(7)).tolist()
    df = _with_baseline([dict(bits=8, latency_p90_ms=0.5)], 1.0)
    best = choose.choose(df, INFO, {"rounds": {"0": rounds, "baseline:onnx-fp32:b1": rounds[::-1]},
                                    "n_rounds": 7})
    assert best["keep_baseline"] and "nothing tried is faster" in best["reason"]


def test_a_faster_but_uncertain_trial_keeps_the_baseline_and_says_why():
    # 11% faster on average, but the rounds disagree: kept, and the reason gives the ratio and
    # its interval rather than saying the gap was under 2%
    trial = [0.8, 1.1, 0.7, 1.05, 0.75, 1.0, 0.85]
    base = [1.0] * 7
    df = _with_baseline([dict(bits=8, latency_p90_ms=0.5)], 1.0)
    best = choose.choose(df, INFO, {"rounds": {"0": trial, "baseline:onnx-fp32:b1": base}, "n_rounds": 7})
    assert best["keep_baseline"] and "nothing tried is faster" in best["reason"]
    assert "95% CI" in best["reason"] and "not better by more than" not in best["reason"]


def test_no_feasible_trial_keeps_the_fastest_feasible_baseline():
    df = _with_baseline([dict(latency_p90_ms=0.1, feasible=False)], 1.0, threads=1)
    best = choose.choose(df, INFO)
    assert best["reason"] == "keep onnxruntime fp32, 1 thread: no trial is feasible"


@pytest.mark.slow
def test_a_sweep_that_finds_nothing_faster_recommends_and_exports_the_baseline(tmp_path):
    # The only trial is the baseline's own configuration (onnxruntime fp32, 1 thread): it cannot
    # beat it beyond the tie margin, so best.json keeps the baseline and export bundles it.
    from workbench import sweep
    from workbench.export.run import export

    path = tmp_path / "keep.yaml"
    path.write_text("\n".join([
        "name: keep", "sampler: grid", "max_accuracy_drop: 1.0",
        "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}",
        "search_space:", "  bits: 32", "  runtime: onnxruntime", "  threads: 1"]) + "\n")
    run_dir = sweep.run(config.load(path), runs_dir=tmp_path / "runs", progress=False)
    best = json.loads((run_dir / "best.json").read_text())
    assert best["keep_baseline"] and best["trial"].startswith("baseline:")
    assert "nothing tried is faster" in best["reason"] or "no trial is feasible" in best["reason"]
    assert best["params"]["runtime"] in ("onnxruntime", "tensorflow")
    assert best["reason"] in (run_dir / "report.md").read_text()
    bundle = export(run_dir)
    assert (bundle / "predict.py").exists()
