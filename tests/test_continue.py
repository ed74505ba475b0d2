"""Continuing a study: a changed experiment is refused before anything is written, and a small
space is measured to its last distinct configuration (real Optuna storages, real notebooks)."""

import json
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

from workbench import config
from workbench.core.errors import ConfigError
from workbench.results import rundir
from workbench.sweep import space
from workbench.sweep.study import check_unchanged, open_study, storage_url

MEASUREMENT = "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}"


def experiment(tmp_path: Path, name: str = "tiny.yaml", drop: float = 1.0, **space_) -> Path:
    space_ = {"bits": [32, 8], "batch_size": 1, "threads": 1, **space_}
    lines = ["name: tiny", "sampler: tpe", f"max_accuracy_drop: {drop}", MEASUREMENT,
             "search_space:"] + [f"  {k}: {json.dumps(v)}" for k, v in space_.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def started_run(tmp_path: Path):
    """A run directory as a first sweep leaves it: run files, and one trial sampled and told."""
    exp = space.resolve(config.load(experiment(tmp_path)))
    run_dir = rundir.create_run_dir(rundir.run_dir_of(exp, "tiny", tmp_path / "runs"))
    url = storage_url(exp, run_dir, None)
    study = open_study(exp, "tiny", url)
    rundir.write_run_files(exp, "tiny", run_dir, url)
    with warnings.catch_warnings():  # the sweep beats the heartbeat itself; this trial needs none
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    space.suggest(trial, exp)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return run_dir, url


def test_changed_experiment_is_refused_before_anything_is_written(tmp_path):
    run_dir, url = started_run(tmp_path)
    before = {f: (run_dir / f).read_bytes() for f in ("run.json", "experiment.yaml")}
    changed = experiment(tmp_path, "changed.yaml", drop=0.5, bits=[32, 8, 4])

    result = run_cli("sweep", str(changed), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], result.stderr
    assert "search_space.bits [32, 8] -> [32, 8, 4]" in lines[0]
    assert "max_accuracy_drop 1.0 -> 0.5" in lines[0]
    assert "--study NEW" in lines[0]
    assert {f: (run_dir / f).read_bytes() for f in before} == before
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state.name for t in study.trials] == ["PRUNED"]  # nothing asked, nothing RUNNING


def test_changed_space_is_refused_from_the_study_alone(tmp_path):
    """Without experiment.yaml (another machine's run directory), the trials' distributions tell."""
    run_dir, url = started_run(tmp_path)
    (run_dir / "experiment.yaml").unlink()
    exp = space.resolve(config.load(experiment(tmp_path, "changed.yaml", bits=[32, 16, 8])))
    study = optuna.load_study(study_name="tiny", storage=url)
    with pytest.raises(ConfigError, match=r"search_space.bits \[32, 8\] -> \[32, 16, 8\]"):
        check_unchanged(study, exp, run_dir)
    # a new n_trials, timeout or sampler continues the same study
    same = space.resolve(config.load(experiment(tmp_path, "same.yaml")))
    check_unchanged(study, same.model_copy(update={"n_trials": 9, "sampler": "random"}), run_dir)


@pytest.mark.slow
def test_small_space_is_measured_to_its_last_configuration(tmp_path):
    """TPE on three configurations repeats itself at once; the sweep enumerates what is left
    instead, stores no pile of repeats, and says so when asked for more than the space holds."""
    exp = experiment(tmp_path, bits=[32, 16, 8])
    runs = tmp_path / "runs"
    result = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet", "--n-trials", "5")
    assert result.returncode == 0, result.stderr
    assert "--n-trials 5: the search space has 3 distinct configurations" in result.stderr
    url = f"sqlite:///{runs / 'tiny' / 'tiny' / 'study.db'}"
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["bits"] for t in complete) == [8, 16, 32]
    assert sum("duplicate_of" in t.user_attrs for t in trials) <= 1
    assert not [t for t in trials if t.state.name == "RUNNING"]

    more = run_cli("sweep", str(exp), "--runs-dir", str(runs), "--quiet", "--add", "2")
    assert more.returncode == 0, more.stderr
    assert "--add 2: the search space has 3 distinct configurations, the study 3 trials" in more.stderr
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == len(trials)


def test_an_interrupted_trial_shows_why_in_the_table(tmp_path):
    from workbench.results import table

    run_dir, url = started_run(tmp_path)
    study = optuna.load_study(study_name="tiny", storage=url)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    # as storage.recover_interrupted records a trial whose worker is gone
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", "worker pid 123 on host is gone")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    rows = table.load_table(run_dir)
    row = rows[rows.trial == str(trial.number)].iloc[0]
    assert row.state == "FAIL" and row.reason == "interrupted: worker pid 123 on host is gone"
