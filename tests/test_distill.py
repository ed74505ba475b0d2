"""Distillation as a variant: students scaled from the teacher's architecture (or given as a
file), trained with keras.distillation.Distiller, then exported and run like any artifact."""

import numpy as np
import pytest

from workbench import config, sweep, trial
from workbench.core.errors import TrialPruned
from workbench.results import table
from workbench.variants import distill
from workbench.models import builtin

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0, calibration_samples=50)


def test_scaled_student_keeps_the_head_and_shrinks_the_body():
    import keras

    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"),
                                keras.layers.Dense(32, activation="relu"),
                                keras.layers.Dense(5, activation="softmax")])
    student = distill.scaled_clone(teacher, 0.25, head="linear")
    units = [layer.units for layer in student.layers]
    assert units == [16, 8, 5]
    assert student.layers[-1].get_config()["activation"] == "linear"
    assert student.count_params() < teacher.count_params() / 4


def test_scaled_text_transformer_keeps_shapes_consistent():
    teacher = builtin._text_transformer((32,), 4)
    student = distill.scaled_clone(teacher, 0.5)
    out = student.predict({"tokens": np.ones((2, 32), np.int32), "mask": np.ones((2, 32), np.int32)}, verbose=0)
    assert out.shape == (2, 4) and student.count_params() < teacher.count_params() / 2


def test_non_standard_layer_is_pruned_with_the_reason():
    import keras

    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2),
                                keras.layers.Dense(3)])
    with pytest.raises(TrialPruned, match="not a standard Keras layer"):
        distill.scaled_clone(teacher, 0.5)


def test_width_one_is_the_teacher_and_the_cache_key_holds_the_recipe(digits_model):
    from workbench.config.params import TrialParams

    assert not distill.applies(TrialParams())
    a = distill.recipe(TrialParams(distill_width=0.5))
    b = distill.recipe(TrialParams(distill_width=0.5, distill_temperature=5.0))
    assert a != b


def test_distilled_student_runs_and_is_smaller():
    base = dict(model="digits_mlp", data="digits", **FAST)
    teacher = trial.run(base)
    student = trial.run({**base, "distill_width": 0.5, "distill_epochs": 3})
    assert student["status"] == "complete", student.get("reason")
    assert student["transforms"][0] == "distill:0.5"
    assert student["size_bytes"] < teacher["size_bytes"] / 2
    assert student["accuracy"] > 50.0  # learnt something in 3 epochs (10 classes: chance is 10%)


def test_regression_student_is_trained_on_mse(tmp_path):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "experiments" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    examples = module.make_all(tmp_path)
    m = trial.run(dict(model=str(examples / "regression.keras"), data=str(examples / "regression.npz"),
                       task="regression", distill_width=0.5, distill_epochs=3, **FAST))
    assert m["status"] == "complete", m.get("reason")
    assert np.isfinite(m["mae"])


@pytest.mark.slow
def test_distillation_sweep(tmp_path):
    exp = config.parse({
        "name": "distill", "model": "digits_mlp", "data": "digits", "sampler": "grid", "n_trials": 3,
        "measurement": {"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 2},
        "calibration_samples": 50, "max_accuracy_drop": 100.0,
        "search_space": {"distill_width": [1.0, 0.5, 0.25], "distill_epochs": 2},
    }, "distill.yaml")
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    df = table.load_table(run_dir)
    trials = df[df.kind == "trial"]
    assert len(trials) == 3 and set(trials.state) == {"COMPLETE"}, trials.reason.tolist()
    sizes = trials.sort_values("size_bytes").size_bytes.tolist()
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_user_student_file_is_distilled_into(tmp_path):
    import keras

    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(32, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")], name="my_student")
    student.save(tmp_path / "student.keras")
    m = trial.run(dict(model="digits_mlp", data="digits", distill_width=0.5, distill_epochs=3,
                       distill_student=str(tmp_path / "student.keras"), **FAST))
    assert m["status"] == "complete", m.get("reason")
    assert m["transforms"][0] == "distill:student" and "distill-student" in m["label"]
    assert m["accuracy"] > 50.0
    wrong = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
    wrong.save(tmp_path / "wrong.keras")
    bad = trial.run(dict(model="digits_mlp", data="digits", distill_width=0.5, distill_epochs=1,
                         distill_student=str(tmp_path / "wrong.keras"), **FAST))
    assert bad["status"] == "pruned" and "must take the teacher's inputs" in bad["reason"]
