"""trial.run end to end in-process: export equivalence, quantized accuracy, caching, pruning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from workbench import trial, variants
from workbench.config.params import TrialParams
from workbench.measure import timing
from workbench.variants import export

FAST = dict(warmup=2, min_runs=20, min_seconds=0.05, max_seconds=2.0)


def test_builtin_model_is_accurate(digits_model):
    assert digits_model.accuracy >= 95.0
    assert digits_model.reference().shape == (360, 10)


def test_onnx_export_matches_keras(digits, digits_model):
    art = variants.build(digits_model, digits, TrialParams(), 200)
    assert art.format == "onnx" and art.path.exists()
    assert export.max_abs_diff_vs_reference(art.path, digits_model, digits) <= export.TOLERANCE


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_within_one_point_of_fp32(mode):
    fp32 = trial.run(dict(bits=32, **FAST))
    int8 = trial.run(dict(bits=8, int8_mode=mode, **FAST))
    assert int8["status"] == "complete", int8.get("reason")
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 1.0
    assert int8["size_bytes"] < fp32["size_bytes"] / 2
    assert int8["top1_agreement"] >= 98.0
    assert "int8" in int8["transforms"][-1]


def test_metrics_are_complete_and_consistent():
    m = trial.run(dict(bits=32, batch_size=8, threads=1, **FAST))
    assert m["status"] == "complete"
    assert m["accuracy_drop"] == pytest.approx(m["baseline_accuracy"] - m["accuracy"])
    assert m["max_abs_diff"] <= export.TOLERANCE and m["top1_agreement"] == 100.0
    assert m["n_runs"] >= FAST["min_runs"]
    assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"] <= m["latency_p99_ms"]
    assert m["latency_p50_ci_low_ms"] <= m["latency_p50_ms"] <= m["latency_p50_ci_high_ms"]
    assert m["throughput_sps"] > 0 and m["size_gzip_bytes"] < m["size_bytes"]
    assert m["providers"][0] == "CPUExecutionProvider"
    assert m["fingerprint"]["cpu"]["cores"] >= 1
    json.dumps(m)  # serialisable as metrics.json


def test_unavailable_provider_is_pruned_with_reason():
    m = trial.run(dict(provider="CUDAExecutionProvider", **FAST))
    assert m["status"] == "pruned"
    assert "CUDAExecutionProvider is not available" in m["reason"]


def test_keras_baseline_runs_in_tensorflow():
    m = trial.run(dict(runtime="tensorflow", **FAST))
    assert m["status"] == "complete" and m["max_abs_diff"] < 1e-5
    assert m["providers"] == ["tensorflow:CPU"]


def test_cached_trial_does_not_import_tensorflow():
    trial.run(dict(bits=8, **FAST))  # make sure the artifact is cached
    code = ("import sys, json; from workbench import trial; "
            f"m = trial.run({dict(bits=8, **FAST)!r}); "
            "print(json.dumps([m['status'], 'tensorflow' in sys.modules, m['build_seconds']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ,
                         check=True).stdout.strip().splitlines()[-1]
    status, imported_tf, build_seconds = json.loads(out)
    assert status == "complete" and not imported_tf and build_seconds >= 0  # how fast: benchmarks/


def test_timing_batch_is_real_samples_of_the_requested_size(digits):
    b = timing.timing_batch(digits.x_eval, 500)
    assert b.shape == (500, 8, 8, 1) and b.dtype == np.float32 and b.flags.c_contiguous
    np.testing.assert_array_equal(b[:360], digits.x_eval)
