"""Runtimes and variant transforms are plug-ins: a module registering a numpy-only runtime and a
weight-rounding transform (tests/plugins/numpy_runtime.py, copied to a temporary module here) is
accepted by the config, sampled by the sweep's conditional space, run by a trial (in-process and
in a notebook kernel), listed by the doctor and exported as a bundle, with nothing else edited."""

import json
import subprocess
import sys

import optuna
import pytest

from workbench import config, runtimes, trial, variants
from workbench.config import parameters
from workbench.config.params import TrialParams
from workbench.core.errors import ConfigError
from workbench.export.run import export_trial
from workbench.runtimes import doctor
from workbench.sweep import notebook, space

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0)
MODULE = "wb_test_numpy_runtime"


@pytest.fixture
def numpy_plugin(plugin):
    """The numpy runtime and weight-rounding plug-in, named in WORKBENCH_PLUGINS."""
    plugin("numpy_runtime.py", MODULE)


def test_registries_hold_the_shipped_plugins():
    assert list(runtimes.registered()) == ["onnxruntime", "openvino", "litert", "tensorflow"]
    assert [t.name for t in variants.registered()] == ["distill", "prune", "native", "tflite",
                                                       "export:onnx", "quantize:onnx"]
    # allowed values are declared once, by the plug-in that reads them
    params = parameters.parameters()
    assert params["graph_optimization"].choices == ("all", "extended", "basic", "disabled")
    assert params["runtime"].choices == tuple(runtimes.registered())
    assert parameters.applies("ov_hint", {"runtime": "openvino"}) and not parameters.applies("ov_hint", {"runtime": "litert"})
    assert parameters.applies("provider", {"runtime": "openvino"}) and not parameters.applies("provider", {"runtime": "litert"})
    assert not parameters.applies("calibration", {"bits": 8, "int8_mode": "dynamic"})


def test_a_new_runtime_is_accepted_by_config_params_and_sweep(numpy_plugin):
    exp = config.parse({"name": "np", "search_space": {
        "runtime": ["onnxruntime", "numpy"], "numpy_dtype": ["float32", "float64"],
        "graph_optimization": ["all", "basic"]}})
    assert TrialParams(runtime="numpy").numpy_dtype == "float32"
    with pytest.raises(ConfigError, match=r"search_space.numpy_dtype: unknown value 'float16'"):
        config.parse({"name": "np", "search_space": {"numpy_dtype": "float16"}}, "np.yaml")
    with pytest.raises(ConfigError, match="trial parameter numpy_dtype"):
        TrialParams.parse({"runtime": "numpy", "numpy_dtype": "int8"})
    # the conditional space: numpy_dtype only for numpy, graph_optimization only for onnxruntime
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        t = study.ask()
        p = space.suggest(t, exp)
        seen.add(p["runtime"])
        assert ("numpy_dtype" in p) == (p["runtime"] == "numpy")
        assert ("graph_optimization" in p) == (p["runtime"] == "onnxruntime")
        study.tell(t, 0.0)
    assert seen == {"onnxruntime", "numpy"}
    points = space.grid_points(exp)
    assert sorted(map(json.dumps, points)) == sorted(map(json.dumps, [
        {"runtime": "onnxruntime", "graph_optimization": "all"},
        {"runtime": "onnxruntime", "graph_optimization": "basic"},
        {"runtime": "numpy", "numpy_dtype": "float32"}, {"runtime": "numpy", "numpy_dtype": "float64"}]))


@pytest.mark.slow
def test_a_new_runtime_runs_trials_is_listed_and_exported(numpy_plugin, tmp_path):
    m = trial.run(dict(model="digits_mlp", runtime="numpy", numpy_dtype="float64", **FAST))
    assert m["status"] == "complete", m.get("reason")
    assert m["providers"] == ["numpy:CPU"] and m["max_abs_diff"] <= 1e-4 and m["top1_agreement"] == 100.0
    # what it cannot run is pruned with its reason (an int8 QDQ graph)
    q = trial.run(dict(model="digits_mlp", runtime="numpy", bits=8, **FAST))
    assert q["status"] == "pruned" and "not supported by the numpy runtime" in q["reason"]
    # the doctor lists it
    report = doctor.collect(probe_tensorflow=False)
    assert any(r["name"] == "numpy" and r["usable"] for r in report["runtimes"])
    assert "numpy" in doctor.render(report)
    # export writes its bundle; predict.py --check runs it in a fresh process, numpy + onnx only
    out = export_trial(m, tmp_path / "bundle")
    check = subprocess.run([sys.executable, "predict.py", "--check", "--json"], cwd=out,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == result["expected"]["accuracy"]
    # a trial notebook (a fresh kernel) sees the plug-in through WORKBENCH_PLUGINS
    nb = notebook.execute(dict(model="digits_mlp", runtime="numpy", **FAST), tmp_path / "nb", timeout_s=300)
    assert nb["status"] == "complete" and nb["providers"] == ["numpy:CPU"]


@pytest.mark.slow
def test_a_new_transform_is_chained_and_its_parameter_must_apply(numpy_plugin):
    assert [t.name for t in variants.registered()][-1] == "round-weights"
    m = trial.run(dict(model="digits_mlp", runtime="numpy", weight_decimals=2, **FAST))
    assert m["status"] == "complete", m.get("reason")
    assert m["transforms"] == ["export:onnx", "round-weights:2"] and m["max_abs_diff"] > 0
    # a route that never reaches an ONNX artifact cannot honour it: pruned with the reason
    t = trial.run(dict(model="digits_mlp", runtime="litert", weight_decimals=2, **FAST))
    assert t["status"] == "pruned" and "weight_decimals=2 is not applied" in t["reason"]
