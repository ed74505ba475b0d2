"""End-to-end sweeps: real Optuna storage, real notebooks executed by papermill."""

import json
import shutil
from pathlib import Path

import nbformat
import optuna
import pandas as pd
import pytest
from conftest import ROOT, run_cli

from workbench import config, sweep
from workbench.results import table
from workbench.sweep import notebook

REQUIRED_COLUMNS = ["trial", "state", "bits", "int8_mode", "sparsity", "batch_size", "runtime",
                    "threads", "accuracy", "accuracy_drop", "latency_p50_ms", "latency_p90_ms",
                    "latency_p99_ms", "throughput_sps", "size_bytes", "speedup_vs_baseline",
                    "feasible", "pareto"]


def small_experiment(tmp_path: Path, **space) -> Path:
    space = {"bits": [32, 8], "batch_size": [1, 4], "threads": 1, **space}
    lines = ["name: tiny", "sampler: grid", "n_trials: 3", "max_accuracy_drop: 1.0",
             "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}",
             "search_space:"] + [f"  {k}: {json.dumps(v)}" for k, v in space.items()]
    path = tmp_path / "tiny.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_cli_sweep_end_to_end_and_resume(tmp_path):
    exp = small_experiment(tmp_path)
    runs = tmp_path / "runs"
    result = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = runs / "tiny" / "tiny"
    assert f"run directory: {run_dir}" in result.stdout
    assert "recommended: trial" in result.stdout

    df = pd.read_csv(run_dir / "results.csv")
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    trials = df[df.kind == "trial"]
    assert len(trials) == 3 and set(trials.state) == {"COMPLETE"}
    baselines = df[df.kind == "baseline"]
    assert set(baselines.runtime) == {"tensorflow", "onnxruntime"}
    assert set(baselines.batch_size) == {1, 4}
    assert (trials.speedup_vs_baseline > 0).all() and trials.pareto.any()
    for number in trials.trial:
        nb_dir = run_dir / "trials" / str(number)
        metrics = json.loads((nb_dir / "metrics.json").read_text())
        assert metrics["status"] == "complete"
        executed = nbformat.read(nb_dir / "trial.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    best = json.loads((run_dir / "best.json").read_text())
    # a trial, or the fp32 baseline kept when nothing tried beats it (issue 19)
    assert best["trial"] in set(df.trial.astype(str)) and best["reason"]
    assert (run_dir / "pareto.png").stat().st_size > 5000
    assert "## Recommendation" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "environment.json").read_text())["cpu"]["cores"] >= 1

    # The storage is a plain Optuna study (optuna-dashboard and load_study read it).
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.trials) == 3 and all(t.constraints for t in study.trials)

    # Same command again: the study already has n_trials, nothing new is measured.
    again = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}").trials) == 3
    # --n-trials is the total to reach: one more.
    more = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet", "--n-trials", "4")
    assert more.returncode == 0, more.stderr
    assert len(pd.read_csv(run_dir / "results.csv").query("kind == 'trial'")) == 4


@pytest.mark.slow
def test_failing_trial_is_recorded_and_sweep_continues(tmp_path, monkeypatch):
    # A real notebook that raises for fp16, otherwise the real trial notebook.
    nb = nbformat.read(notebook.TRIAL_NOTEBOOK, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(
        'if bits == 16:\n    raise RuntimeError("deliberate failure for fp16")'))
    broken = tmp_path / "trial.ipynb"
    nbformat.write(nb, broken)
    monkeypatch.setattr(notebook, "TRIAL_NOTEBOOK", broken)

    exp = config.load(small_experiment(tmp_path, bits=[32, 16, 8], batch_size=1))
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    df = table.load_table(run_dir)
    trials = df[df.kind == "trial"].set_index("bits")
    assert trials.loc[16, "state"] == "FAIL"
    assert trials.loc[16, "reason"] == "RuntimeError: deliberate failure for fp16"
    assert Path(trials.loc[16, "notebook"]).exists()
    assert set(trials.loc[[32, 8], "state"]) == {"COMPLETE"}
    assert "FAIL" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_papermill_cli_runs_the_trial_notebook(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.ipynb"
    subprocess.run([str(Path(sys.executable).parent / "papermill"), str(notebook.TRIAL_NOTEBOOK),
                    str(out), "-p", "bits", "8", "-p", "batch_size", "2", "--cwd", str(tmp_path)],
                   check=True, capture_output=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert metrics["params"]["bits"] == 8 and metrics["params"]["batch_size"] == 2


def test_a_failed_configuration_is_remembered_and_an_interrupted_one_is_not():
    # Real Optuna trials in an in-memory storage: a deterministic failure is a twin of the same
    # parameters (never run again); an interrupted trial (no error) or a timeout is not.
    from optuna.trial import TrialState, create_trial

    from workbench.sweep import loop

    study = optuna.create_study()
    p = {"bits": 8, "runtime": "openvino"}
    for state, attrs in ((TrialState.FAIL, {"interrupted": "worker pid 1 on h is gone"}),
                         (TrialState.FAIL, {"error": "timed out after 60 s"})):
        study.add_trial(create_trial(state=state, user_attrs={"params": p, **attrs}))
    assert loop._measured_twin(study, p, number=99) is None
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "params": p, "error": "RuntimeError: onnxruntime 1.32.0 quantize_static failed: x"}))
    number, why = loop._measured_twin(study, p, number=99)
    assert number == 2 and why.startswith("same parameters as failed trial 2 (RuntimeError: onnxruntime")
    assert loop._measured_twin(study, {**p, "bits": 32}, number=99) is None


def test_an_artifact_that_could_not_be_built_is_not_built_again_for_other_threads_or_runtimes():
    from optuna.trial import TrialState, create_trial

    from workbench.sweep import loop

    study = optuna.create_study()
    p = {"bits": 8, "int8_mode": "static", "per_channel": True, "runtime": "onnxruntime", "threads": 1}
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={
        "params": p, "reason": "onnxruntime 1.32.0 quantize_static failed: x", "build_failed": True}))
    # the same ONNX artifact: another thread count, or OpenVINO reading the same file
    for other in ({**p, "threads": 2}, {**p, "runtime": "openvino"}):
        number, why = loop._measured_twin(study, other, number=99)
        assert number == 0 and why.startswith("same artifact as trial 0, which could not be built")
    # another artifact: per-tensor scales, or the TFLite route
    assert loop._measured_twin(study, {**p, "per_channel": False}, number=99) is None
    assert loop._measured_twin(study, {**p, "runtime": "litert"}, number=99) is None


@pytest.mark.slow
def test_sweep_runs_a_failing_configuration_once_and_tells_the_sampler(tmp_path, plugin):
    plugin("failing_quantizer.py", "wb_test_failing_quantizer")
    path = tmp_path / "fails.yaml"
    path.write_text("\n".join([
        "name: fails", "sampler: tpe", "n_trials: 6", "max_accuracy_drop: 5.0",
        "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}",
        "search_space:", "  bits: 32", "  failing_quant: [0, 1]", "  runtime: onnxruntime",
        "  threads: 1"]) + "\n")
    run_dir = sweep.run(config.load(path), runs_dir=tmp_path / "runs", progress=False)
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{run_dir / 'study.db'}")
    ran = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    failed = [t for t in ran if t.state.name == "FAIL"]
    assert len(failed) == 1 and "failing-quantizer 1.0 quantize failed" in failed[0].user_attrs["error"]
    assert [t.user_attrs["params"]["failing_quant"] for t in ran].count(1) == 1
    repeats = [t for t in study.trials if t.user_attrs.get("duplicate_of") == failed[0].number]
    # proposed again by the sampler: skipped, told as PRUNED (TPE counts it among the bad trials);
    # a finite space is enumerated once the sampler repeats itself, so there may be none
    assert all(t.state.name == "PRUNED" for t in repeats)
    assert all("same parameters as failed trial" in t.user_attrs["reason"] for t in repeats)
