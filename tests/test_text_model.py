"""The builtin text model: a small Keras transformer on two int32 inputs (token ids + padding
mask), trained offline on token data generated in code, through the MatMul-bound paths."""

import numpy as np
import pytest
from conftest import ROOT

from workbench import config, data, models, sweep, trial
from workbench.results import table
from workbench.data import datasets

FAST = dict(model="text_transformer", data="text", warmup=2, min_runs=5, min_seconds=0.05,
            max_seconds=2.0, calibration_samples=50)


@pytest.fixture(scope="module")
def text():
    return data.load("text")


def test_text_data_is_two_int32_inputs_and_deterministic(text):
    assert set(text.x_eval) == {"tokens", "mask"}
    assert all(v.dtype == np.int32 and v.shape == (text.n_eval, datasets.TEXT_LEN) for v in text.x_eval.values())
    assert np.array_equal(text.x_eval["mask"] == 0, text.x_eval["tokens"] == 0)  # padding is id 0
    assert data.load("text").key == text.key


def test_text_model_reaches_90_percent(text):
    model = models.resolve("text_transformer", text)
    assert model.accuracy >= 90.0
    assert [i["dtype"] for i in model.inputs] == ["int32", "int32"]


@pytest.mark.parametrize("bits,mode", [(8, "dynamic"), (8, "static"), (4, "static")])
def test_matmul_quantization_applies_to_the_transformer(bits, mode):
    m = trial.run({**FAST, "bits": bits, "int8_mode": mode})
    assert m["status"] == "complete", m.get("reason")
    assert m["accuracy_drop"] <= 5.0
    fp32 = trial.run(FAST)
    assert m["size_bytes"] < fp32["size_bytes"]


def test_litert_keeps_integer_inputs_integer():
    from ai_edge_litert.interpreter import Interpreter

    m = trial.run({**FAST, "runtime": "litert", "bits": 8, "int8_mode": "static"})
    assert m["status"] == "complete", m.get("reason")
    details = Interpreter(model_path=m["artifact"]).get_input_details()
    assert sorted(str(np.dtype(d["dtype"])) for d in details) == ["int32", "int32"]


@pytest.mark.slow
def test_text_experiment_runs_at_small_size(tmp_path):
    exp = config.load(ROOT / "experiments" / "text.yaml")
    exp = exp.model_copy(update={
        "n_trials": 3, "calibration_samples": 50,
        "measurement": config.Measurement(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2)})
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    df = table.load_table(run_dir)
    trials = df[df.kind == "trial"]
    assert len(trials) == 3 and set(trials.state) <= {"COMPLETE", "PRUNED"}, trials.reason.tolist()
    assert (trials.state == "COMPLETE").any()
