"""Coverage sweeps: every combination the schema allows of task x variant kind x runtime goes
through a real sweep (papermill notebooks, a SQLite study) and ``report.build``.

Variant kinds: fp32, fp16, int8 static, int8 dynamic, int4, pruned unstructured, pruned
channels, distilled, and the TFLite route (runtime litert). A combination a runtime cannot hold must end
PRUNED with its reason, shown in the report; nothing may end FAIL. Six sweeps cover it all:
precision x runtime, pruning x runtime and distillation x runtime, for both tasks.
"""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_cli

from workbench import runtimes

RUNTIMES = tuple(runtimes.registered())  # onnxruntime, openvino, litert, tensorflow (and any plug-in)

FAST = {"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 2.0}
PRECISION = {"bits": [32, 16, 8, 4], "int8_mode": ["static", "dynamic"], "sparsity": 0.0,
             "batch_size": 1, "threads": 1, "runtime": list(RUNTIMES)}
PRUNING = {"bits": 32, "sparsity": 0.5, "prune_structure": ["unstructured", "channels"],
           "finetune_epochs": 1, "batch_size": 1, "threads": 1, "runtime": list(RUNTIMES)}
DISTILLATION = {"bits": 32, "distill_width": 0.5, "distill_epochs": 1, "batch_size": 1, "threads": 1,
                "runtime": list(RUNTIMES)}
SPACES = {"precision": PRECISION, "pruning": PRUNING, "distillation": DISTILLATION}
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
        doc.update(model="digits_cnn" if space is PRUNING else "digits_mlp", data="digits",
                   max_accuracy_drop=100.0)
    else:
        model, data = regression_files
        doc.update(model=str(model), data=str(data), task="regression", max_accuracy_drop=10.0)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task,space", [
    ("classification", "precision"), ("classification", "pruning"), ("classification", "distillation"),
    ("regression", "precision"), ("regression", "pruning"), ("regression", "distillation"),
])
def test_every_combination_completes_or_is_pruned_with_its_reason(tmp_path, task, space,
                                                                  regression_files):
    spec = SPACES[space]
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
    assert all(isinstance(r, str) and r.strip() for r in pruned.reason), pruned.to_string()

    # every (variant kind, runtime) combination was tried exactly once
    if space == "precision":
        kinds = {(int(r.bits), r.int8_mode if r.bits == 8 else None, r.runtime) for r in trials.itertuples()}
        expected = {(b, m, rt) for b, m in PRECISION_KINDS for rt in RUNTIMES}
    elif space == "pruning":
        kinds = {(float(r.sparsity), r.prune_structure, r.runtime) for r in trials.itertuples()}
        expected = {(s, st, rt) for s, st in PRUNING_KINDS for rt in RUNTIMES}
    else:
        assert all(" distill0.5 " in label for label in trials.label), trials.label.tolist()
        kinds, expected = set(trials.runtime), set(RUNTIMES)
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
    assert best["trial"] in set(trials[trials.state == "COMPLETE"].trial.astype(str)) or best.get("keep_baseline")
    assert f"recommended: trial {best['trial']}" in result.stdout
    quality = "mae" if task == "regression" else "accuracy"
    assert trials[trials.state == "COMPLETE"][quality].notna().all()


def test_report_never_dies_on_a_trials_metrics(tmp_path):
    """Trials whose recorded metrics miss keys, have wrong types or NaN, written into a real
    Optuna storage beside one real measurement: the report shows each with its reason."""
    import math

    import optuna

    from workbench import report, trial
    from workbench.decision import best as best_mod

    good = trial.run(dict(model="digits_mlp", runtime="onnxruntime", **FAST))
    assert good["status"] == "complete"
    run_dir = tmp_path / "odd"
    run_dir.mkdir()
    url = f"sqlite:///{run_dir / 'study.db'}"
    objectives = ["accuracy", "latency_p90_ms", "size_bytes"]
    (run_dir / "run.json").write_text(json.dumps({
        "experiment": "odd", "study": "odd", "storage": url, "objectives": objectives,
        "max_accuracy_drop": 1.0}))
    study = optuna.create_study(study_name="odd", storage=url,
                                directions=["maximize", "minimize", "minimize"])
    odd = {
        "missing keys": ({k: v for k, v in good.items()
                          if k not in ("latency_p50_ms", "size_bytes", "fingerprint")},
                         ["no latency_p50_ms", "size_bytes"]),
        "wrong types": ({**good, "latency_p50_ms": "fast", "feasible": "yes", "fingerprint": "x",
                         "params": [1], "label": 5, "latency_quantiles_ms": "q", "bits": "8"},
                        ["latency_p50_ms is 'fast'", "feasible is 'yes'"]),
        "NaN": ({**good, "accuracy": math.nan, "latency_p50_ms": math.nan,
                 "latency_p50_ci_high_ms": math.inf}, ["accuracy is nan", "latency_p50_ci_high_ms is inf"]),
        "not a mapping": ("fast and small", ["metrics are a str, not a mapping"]),
    }
    numbers = {}

    def add(metrics, params=good["params"], state=optuna.trial.TrialState.COMPLETE):
        t = study.ask()
        t.set_user_attr("params", params)
        if metrics is not None:
            t.set_user_attr("metrics", metrics)
        study.tell(t, [1.0, 1.0, 1.0] if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        return str(t.number)

    numbers["good"] = add(good)
    for name, (metrics, _) in odd.items():
        numbers[name] = add(metrics)
    numbers["params not a mapping"] = add(None, params="bits=8", state=optuna.trial.TrialState.FAIL)

    best_mod.decide(run_dir, remeasure=False)  # the recommendation, then the rendering
    paths = report.build(run_dir)

    df = pd.read_csv(paths["results.csv"], dtype={"trial": str})
    assert list(df.trial) == [numbers[k] for k in ["good", *odd, "params not a mapping"]]
    rows = df.set_index("trial")
    for name, (_, expected) in odd.items():
        row = rows.loc[numbers[name]]
        assert row.state == "COMPLETE" and not row.feasible, (name, row.to_dict())
        assert "metrics unusable" in row.reason and all(e in row.reason for e in expected), row.reason
    assert rows.loc[numbers["good"]].feasible and pd.isna(rows.loc[numbers["good"]].reason)
    assert rows.loc[numbers["params not a mapping"]].state == "FAIL"
    best = json.loads((run_dir / "best.json").read_text())
    assert best["trial"] == numbers["good"]  # an unusable row is never recommended
    md = paths["report.md"].read_text()
    assert all(f"| {numbers[name]} | COMPLETE |" in md for name in odd)
    assert "metrics are a str, not a mapping" in md and "metrics unusable" in paths["report.html"].read_text()
