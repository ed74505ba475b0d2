"""Sweeps that survive and scale: workers on a journal, PostgreSQL, SIGKILL + resume,
timeouts, crashing kernels, consecutive failures. Real storages, real notebooks."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import optuna
import pytest
from conftest import run_cli

from workbench import config, sweep
from workbench.core.errors import WorkbenchError
from workbench.results.storage import open_storage
from workbench.sweep import notebook
from workbench.sweep import study as study_mod

pytestmark = pytest.mark.slow
POSTGRES = os.environ.get("WORKBENCH_TEST_POSTGRES")


def write_experiment(tmp_path: Path, name: str, n_trials: int, min_seconds: float = 0.05,
                     extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nsampler: random\nn_trials: {n_trials}\n"
        f"measurement: {{warmup: 2, min_runs: 20, min_seconds: {min_seconds}, max_seconds: 5}}\n"
        "search_space:\n  bits: [32, 16, 8]\n  int8_mode: [static, dynamic]\n"
        "  batch_size: [1, 2]\n  threads: 1\n" + extra)
    return path


def load(url: str, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(url))


def counted(study) -> list:
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")
            and "duplicate_of" not in t.user_attrs and "interrupted" not in t.user_attrs]


def swap_notebook(monkeypatch, tmp_path: Path, code: str) -> None:
    """Use a copy of the real trial notebook with ``code`` run right after the parameters."""
    nb = nbformat.read(notebook.TRIAL_NOTEBOOK, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(code))
    path = tmp_path / "trial.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(notebook, "TRIAL_NOTEBOOK", path)


def test_two_workers_share_a_journal_study(tmp_path):
    exp = write_experiment(tmp_path, "journal2", n_trials=4)
    result = run_cli("sweep", str(exp), "--runs-dir", str(tmp_path / "runs"), "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "journal2" / "journal2"
    study = load(f"journal:{run_dir / 'study.journal'}", "journal2")
    done = counted(study)
    assert len(done) == 4 and all(t.state.name == "COMPLETE" for t in done)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2  # both workers measured
    assert (run_dir / "results.csv").exists()


@pytest.mark.skipif(not POSTGRES and not os.environ.get("CI"),
                    reason="WORKBENCH_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server)")
def test_two_machines_share_a_postgresql_study(tmp_path):
    assert POSTGRES, "CI must provide WORKBENCH_TEST_POSTGRES"
    name = f"pg-{uuid.uuid4().hex[:8]}"
    exp = write_experiment(tmp_path, "pg", n_trials=4)
    exe = Path(sys.executable).parent / "workbench"
    # Two "machines": separate processes with separate run directories, one study.
    procs = [subprocess.Popen([str(exe), "sweep", str(exp), "--storage", POSTGRES, "--study", name,
                               "--runs-dir", str(tmp_path / f"host{i}"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    study = load(POSTGRES, name)
    done = counted(study)
    assert len(done) == 4 and all(t.state.name == "COMPLETE" for t in done)
    assert len({t.number for t in study.trials}) == len(study.trials)
    # Each machine's report sees every trial, wherever it was measured.
    for i in range(2):
        import pandas as pd

        df = pd.read_csv(tmp_path / f"host{i}" / "pg" / name / "results.csv")
        assert (df.kind == "trial").sum() == 4


def test_sigkill_mid_trial_then_resume(tmp_path):
    exp = write_experiment(tmp_path, "killed", n_trials=3, min_seconds=2.0)
    run_dir = tmp_path / "runs" / "killed" / "killed"
    url = f"sqlite:///{run_dir / 'study.db'}"
    exe = Path(sys.executable).parent / "workbench"
    cmd = [str(exe), "sweep", str(exp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until trial 1 is being measured
        time.sleep(0.5)
        if (run_dir / "trials" / "1" / "trial.ipynb").exists():
            time.sleep(1.0)
            break
    else:
        pytest.fail("the sweep never reached trial 1")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = load(url, "killed")
    completed_before = {t.number: t.values for t in before.trials if t.state.name == "COMPLETE"}
    assert [t.state.name for t in before.trials if t.number == 1] == ["RUNNING"]

    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    after = load(url, "killed")
    t1 = after.trials[1]
    assert t1.state.name == "FAIL" and "interrupted" in t1.user_attrs
    retried = [t for t in after.trials if t.number > 1 and t.params == t1.params]
    assert retried and retried[0].state.name == "COMPLETE"
    for number, values in completed_before.items():  # nothing completed was lost
        assert after.trials[number].values == values
    assert len([t for t in counted(after) if t.state.name == "COMPLETE"]) == 3


def test_trial_timeout_is_recorded_and_sweep_continues(tmp_path, monkeypatch):
    swap_notebook(monkeypatch, tmp_path, "import time\nif batch_size == 2:\n    time.sleep(120)")
    exp = config.load(write_experiment(tmp_path, "slow", n_trials=2, extra="trial_timeout_s: 4\n"))
    exp.search_space.batch_size = [2, 1]
    exp.sampler = "grid"
    exp.search_space.bits = 32
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    trials = {t.params["batch_size"]: t for t in load(f"sqlite:///{run_dir / 'study.db'}", "slow").trials}
    assert trials[2].state.name == "FAIL"
    assert trials[2].user_attrs["error"] == "timed out after 4 s"
    assert trials[1].state.name == "COMPLETE"


def test_crashing_kernel_is_recorded_and_failures_stop_the_sweep(tmp_path, monkeypatch):
    swap_notebook(monkeypatch, tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    exp = config.load(write_experiment(tmp_path, "crash", n_trials=5,
                                       extra="max_consecutive_failures: 2\n"))
    with pytest.raises(WorkbenchError, match="2 trials failed in a row"):
        sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    run_dir = tmp_path / "runs" / "crash" / "crash"
    trials = load(f"sqlite:///{run_dir / 'study.db'}", "crash").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["error"].startswith("kernel died") for t in trials)
    assert "FAIL" in (run_dir / "report.md").read_text()  # the report lists them


@pytest.mark.skipif(not POSTGRES and not os.environ.get("CI"),
                    reason="WORKBENCH_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server)")
def test_storage_password_is_never_on_disk_nor_in_argv(tmp_path):
    """A real sweep with --workers 2 against a PostgreSQL role that needs its password: the
    password is in no file of the run directory, on no command line of the workers or
    kernels, in no console output; report reads it from WORKBENCH_STORAGE or says it is missing."""
    import psutil
    import sqlalchemy

    assert POSTGRES, "CI must provide WORKBENCH_TEST_POSTGRES"
    tag = uuid.uuid4().hex[:8]
    role, db, password = f"wb_{tag}", f"wb_{tag}", f"Pw{uuid.uuid4().hex}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {db} OWNER {role}"))
    admin.dispose()
    server = sqlalchemy.engine.make_url(POSTGRES)
    url = f"postgresql://{role}:{password}@{server.host}:{server.port}/{db}"
    wrong = url.replace(password, "wrong")
    with pytest.raises(WorkbenchError, match="cannot open"):  # the role really needs it
        study_mod.open_study(config.load(write_experiment(tmp_path, "pw", 1)), "x", wrong)

    exp = write_experiment(tmp_path, "pw", n_trials=3)
    env = {**os.environ, "WORKBENCH_STORAGE": url}
    exe = Path(sys.executable).parent / "workbench"
    proc = subprocess.Popen([str(exe), "sweep", str(exp), "--workers", "2", "--study", "pw",
                             "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[int, list[str]] = {}
    while proc.poll() is None:  # every command line of the sweep's processes, while they run
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    seen.setdefault(child.pid, child.cmdline())
                except psutil.Error:
                    pass
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    # (a process forked by a worker shows the worker's command line until it execs)
    workers = {c[c.index("--worker") + 1] for c in seen.values() if "workbench.cli" in c and "--worker" in c}
    assert workers == {"0", "1"} and any("ipykernel_launcher" in " ".join(c) for c in seen.values())
    assert not [c for c in seen.values() if password in " ".join(c)]
    assert password not in out + err

    run_dir = tmp_path / "runs" / "pw" / "pw"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.name == "kernel.log" for p in files)
    assert not [p for p in files if password.encode() in p.read_bytes()]
    assert json.loads((run_dir / "run.json").read_text())["storage"] == url.replace(password, "***")

    # report reads the study through WORKBENCH_STORAGE; without it, one line says so.
    bare = {k: v for k, v in os.environ.items() if k != "WORKBENCH_STORAGE"}
    missing = subprocess.run([str(exe), "report", str(run_dir), "--no-remeasure"], env=bare,
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "WORKBENCH_STORAGE" in missing.stderr and password not in missing.stderr
    ok = subprocess.run([str(exe), "report", str(run_dir), "--no-remeasure"], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert password not in ok.stdout + ok.stderr
    assert not [p for p in run_dir.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
