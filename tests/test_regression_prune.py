"""Regression models pruned with sparsity > 0 fine-tune on their own loss (MSE), never on the
classification loss, unstructured and by channels (issue 10)."""

import importlib.util

import numpy as np
import pytest
from conftest import ROOT

from workbench import trial
from workbench.variants.prune import magnitude

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0, calibration_samples=50)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "experiments" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_all(tmp_path_factory.mktemp("byo"))


def test_the_task_picks_the_fine_tune_loss():
    assert magnitude.LOSSES["regression"] == "mean_squared_error"
    assert magnitude.LOSSES["classification"] == "sparse_categorical_crossentropy"


@pytest.mark.parametrize("structure", ["unstructured", "channels"])
def test_regression_model_prunes_and_fine_tunes_on_mse(examples, structure):
    kw = dict(model=str(examples / "regression.keras"), data=str(examples / "regression.npz"),
              task="regression", sparsity=0.5, prune_structure=structure, **FAST)
    one_shot = trial.run({**kw, "finetune_epochs": 0})
    tuned = trial.run({**kw, "finetune_epochs": 3})
    for m in (one_shot, tuned):
        assert m["status"] == "complete", m.get("reason")
        assert np.isfinite(m["mae"]) and np.isfinite(m["rmse"])
    # fine-tuning on the task's own loss recovers part of what pruning cost
    assert tuned["mae"] < one_shot["mae"]
    if structure == "channels":
        assert tuned["params_removed_fraction"] > 0.2
