"""Coverage sweeps: every combination the schema allows of task x variant kind x runtime goes
through a real sweep (papermill notebooks, a SQLite study) and ``report.build``.

Variant kinds: fp32, fp16, int8 static, int8 dynamic, int4, pruned unstructured, pruned
channels, and the TFLite route (runtime litert). A combination a runtime cannot hold must end
PRUNED with its reason, shown in the report; nothing may end FAIL. Four sweeps cover it all:
precision x runtime and pruning x runtime, for classification and for regression.
"""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_cli
from workbench.config import RUNTIMES

FAST = {"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 2.0}
PRECISION = {"bits": [32, 16, 8, 4], "int8_mode": ["static", "dynamic"], "sparsity": 0.0,
             "batch_size": 1, "threads": 1, "runtime": list(RUNTIMES)}
PRUNING = {"bits": 32, "sparsity": 0.5, "prune_structure": ["unstructured", "channels"],
           "finetune_epochs": 1, "batch_size": 1, "threads": 1, "runtime": list(RUNTIMES)}
# (bits, int8_mode) and (sparsity, prune_structure) pairs each sweep must hold for every runtime
PRECISION_KINDS = {(32, None), (16, None), (8, "static"), (8, "dynamic"), (4, None)}
PRUNING_KINDS = {(0.5, "unstructured"), (0.5, "channels")}


@pytest.fixture(scope="module")
def regression_files(tmp_path_factory) -> tuple[Path, Path]:
    """A small regression .npz (experiments/make_examples.py) and an MLP trained on it."""
    import keras
    from keras import layers

    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "experiments" / "make_examples.py")
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    out = tmp_path_factory.mktemp("regression")
    arrays = examples.regression_data(out)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="tanh"), layers.Dense(1)],
                             name="regression_mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(arrays["x_train"], arrays["y_train"], epochs=5, batch_size=64, verbose=0)
    model.save(out / "regression.keras")
    return out / "regression.keras", out / "regression.npz"


def _experiment(tmp_path: Path, name: str, task: str, space: dict, regression_files) -> Path:
    doc = {"name": name, "sampler": "grid", "n_trials": 100, "measurement": FAST,
           "search_space": space, "trial_timeout_s": 300, "max_consecutive_failures": 3}
    if task == "classification":
        # the MLP has MatMuls (int4 applies), the CNN has channels worth pruning
        doc.update(model="digits_mlp" if space is PRECISION else "digits_cnn", data="digits",
                   max_accuracy_drop=100.0)
    else:
        model, data = regression_files
        doc.update(model=str(model), data=str(data), task="regression", max_accuracy_drop=10.0)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


REGRESSION_PRUNING = pytest.mark.xfail(
    reason="pruning fine-tune of a regression model is being added by the models helper (issue 10 "
           "item 3 leaves it to prune.py's owner); remove this mark when it lands", strict=False)


@pytest.mark.slow
@pytest.mark.parametrize("task,space", [
    ("classification", "precision"), ("classification", "pruning"), ("regression", "precision"),
    pytest.param("regression", "pruning", marks=REGRESSION_PRUNING),
])
def test_every_combination_completes_or_is_pruned_with_its_reason(tmp_path, task, space,
                                                                  regression_files):
    spec = PRECISION if space == "precision" else PRUNING
    files = regression_files if task == "regression" else None
    name = f"cov-{task[:3]}-{space}"
    exp = _experiment(tmp_path, name, task, spec, files)
    runs = tmp_path / "runs"
    result = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    run_dir = runs / name / name

    for f in ("results.csv", "report.md", "report.html", "best.json"):
        assert (run_dir / f).is_file(), f
    df = pd.read_csv(run_dir / "results.csv")
    trials = df[df.kind == "trial"]
    failed = trials[~trials.state.isin(["COMPLETE", "PRUNED"])]
    assert failed.empty, failed[["trial", "state", "label", "reason"]].to_string()
    pruned = trials[trials.state == "PRUNED"]
    assert pruned.reason.notna().all() and (pruned.reason.str.strip() != "").all(), pruned.to_string()

    # every (variant kind, runtime) combination was tried exactly once
    if space == "precision":
        kinds = {(int(r.bits), r.int8_mode if r.bits == 8 else None, r.runtime) for r in trials.itertuples()}
        expected = {(b, m, rt) for b, m in PRECISION_KINDS for rt in RUNTIMES}
    else:
        kinds = {(float(r.sparsity), r.prune_structure, r.runtime) for r in trials.itertuples()}
        expected = {(s, st, rt) for s, st in PRUNING_KINDS for rt in RUNTIMES}
    assert kinds == expected and len(trials) == len(expected)
    # the runtimes that can run the fp32 (or pruned fp32) model did so
    done = set(trials[trials.state == "COMPLETE"].runtime)
    assert {"onnxruntime", "openvino", "litert"} <= done, trials[["label", "state", "reason"]].to_string()
    if space == "precision":
        assert "tensorflow" in done

    # the report shows every pruned combination with its reason
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for reason in pruned.reason:
        assert reason.replace("|", "\\|").replace("\n", " ") in md
        assert reason.split(" ")[0] in html
    best = json.loads((run_dir / "best.json").read_text())
    assert best["trial"] in set(trials[trials.state == "COMPLETE"].trial.astype(str))
    assert f"recommended: trial {best['trial']}" in result.stdout
    quality = "mae" if task == "regression" else "accuracy"
    assert trials[trials.state == "COMPLETE"][quality].notna().all()
