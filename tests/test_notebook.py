"""Trial notebooks: kernels started ahead and always shut down, a quiet terminal, a notebook
that reads well, safe study names, and storage URLs whose password is never written down."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from conftest import ROOT, run_cli

from workbench import config, sweep
from workbench.config.params import TrialParams
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.results import rundir
from workbench.results.storage import redact, redact_text, resolve_url
from workbench.sweep import notebook, study

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2)
NOISE = ("E0000", "I0000", "W0000", "cuInit", "oneDNN", "absl", "tensorflow/")


def tiny(tmp_path: Path, name: str = "tiny", bits: str = "[32, 8]", n_trials: int = 2) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsampler: grid\nn_trials: {n_trials}\nmax_accuracy_drop: 1.0\n"
                    "measurement: {warmup: 2, min_runs: 5, min_seconds: 0.05, max_seconds: 2}\n"
                    f"search_space:\n  bits: {bits}\n  batch_size: 1\n  threads: 1\n")
    return path


def kernel_pids(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)
                if "ipykernel_launcher" in " ".join(p.cmdline())}
    except psutil.Error:
        return set()


def alive(pids) -> set[int]:
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"}


# --- storage URLs -------------------------------------------------------------------------

def test_redact_hides_the_password_only():
    assert redact("postgresql://user:s3cr@t@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert redact("postgresql://user@host/db") == "postgresql://user@host/db"
    assert redact("postgresql://h/db?user=u&password=pw&x=1") == "postgresql://h/db?user=u&password=***&x=1"
    assert redact("sqlite:////tmp/a:b/study.db") == "sqlite:////tmp/a:b/study.db"
    assert redact("journal:/tmp/x.journal") == "journal:/tmp/x.journal"
    msg = redact_text("could not connect to postgresql://u:hunter2@h/db (hunter2)", "postgresql://u:hunter2@h/db")
    assert "hunter2" not in msg and "***" in msg


def test_redacted_url_needs_workbench_storage(monkeypatch):
    monkeypatch.delenv("WORKBENCH_STORAGE", raising=False)
    with pytest.raises(ConfigError, match="WORKBENCH_STORAGE"):
        resolve_url("postgresql://u:***@h/db")
    monkeypatch.setenv("WORKBENCH_STORAGE", "postgresql://u:pw@other/db")
    with pytest.raises(ConfigError, match="another storage"):
        resolve_url("postgresql://u:***@h/db")
    monkeypatch.setenv("WORKBENCH_STORAGE", "postgresql://u:pw@h/db")
    assert resolve_url("postgresql://u:***@h/db") == "postgresql://u:pw@h/db"
    assert resolve_url(None) == "postgresql://u:pw@h/db"  # wherever --storage is accepted
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"  # an explicit URL wins


def test_unreachable_storage_error_does_not_show_the_password(tmp_path):
    exp = config.load(tiny(tmp_path))
    with pytest.raises(ConfigError) as err:
        study.open_study(exp, "s", "postgresql://u:topsecret@127.0.0.1:9/db")
    assert "topsecret" not in str(err.value) and "u:***@127.0.0.1:9" in str(err.value)


# --- study names and fresh ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../..", "..", ".", "a/b", "", "x y"])
def test_study_name_cannot_leave_the_runs_directory(tmp_path, name):
    victim = tmp_path / "keep.txt"
    victim.write_text("not the workbench's")
    exp = config.load(tiny(tmp_path))
    with pytest.raises(ConfigError, match="--study"):
        sweep.run(exp, study_name=name, runs_dir=tmp_path / "runs", fresh=True, progress=False)
    assert victim.exists() and not (tmp_path / "runs").exists()


def test_cli_rejects_a_bad_study_name_in_one_line(tmp_path):
    result = run_cli("sweep", str(tiny(tmp_path)), "--study", "../..", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --study '../..'") and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_fresh_deletes_only_a_run_directory_the_workbench_created(tmp_path):
    exp = config.load(tiny(tmp_path))
    run_dir = rundir.run_dir_of(exp, "mine", tmp_path / "runs")
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("the user's")
    with pytest.raises(WorkbenchError, match="not created by the workbench"):
        sweep.run(exp, study_name="mine", runs_dir=tmp_path / "runs", fresh=True, progress=False)
    assert (run_dir / "notes.txt").read_text() == "the user's"

    made = rundir.create_run_dir(rundir.run_dir_of(exp, "made", tmp_path / "runs"))
    assert (made / rundir.MARKER).exists()
    (made / "old.txt").write_text("from an earlier run")
    rundir.create_run_dir(made, fresh=True)
    assert not (made / "old.txt").exists() and (made / rundir.MARKER).exists()


# --- the trial notebook -----------------------------------------------------------------------

def test_trial_notebook_names_each_parameter_once():
    nb = nbformat.read(notebook.TRIAL_NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                     and "parameters" not in c.metadata.get("tags", []))
    assert "globals()" in code and "TrialParams().model_dump()" in code  # the names, built once
    assert not [name for name in TrialParams().model_dump() if f"{name}=" in code.replace(" ", "")]
    assert "pandas" not in code


@pytest.mark.slow
def test_kernels_ahead_run_each_notebook_in_its_own_fresh_kernel(tmp_path):
    params = dict(bits=8, **FAST)
    used = []
    with notebook.Kernels(tmp_path / "spare") as kernels:
        for i in range(2):
            metrics = notebook.execute(params, tmp_path / str(i), kernels=kernels)
            assert metrics["status"] == "complete"
            used.append(kernels._spare.pid)  # started while notebook i ran; notebook i+1's
        spare = kernels._spare
        assert alive([spare.pid]) and not alive(used[:1])  # used once, then shut down
        assert len(set(used)) == 2
    assert not alive([spare.pid])  # and shut down with the block
    assert not list((tmp_path / "spare").glob(".kernel-*.log"))
    for i in range(2):
        out = tmp_path / str(i)
        assert (out / notebook.KERNEL_LOG).exists()
        nb = nbformat.read(out / "trial.ipynb", as_version=4)
        shown = nb.cells[-1].outputs[0]["data"]
        assert "<table>" in shown["text/html"] and "latency_p50_ms" in shown["text/plain"]
        # it ran in its own directory (metrics_path is relative), and papermill recorded it
        assert json.loads((out / "metrics.json").read_text())["status"] == "complete"
    assert Path.cwd() == Path(os.getcwd())  # the parent's working directory is untouched


@pytest.mark.slow
def test_pruned_trial_notebook_shows_the_reason(tmp_path):
    notebook.execute(dict(provider="CUDAExecutionProvider", **FAST), tmp_path)
    nb = nbformat.read(tmp_path / "trial.ipynb", as_version=4)
    text = nb.cells[-1].outputs[0]["data"]["text/plain"]
    assert "pruned" in text and "reason: provider CUDAExecutionProvider" in text


@pytest.mark.slow
def test_sweep_terminal_is_quiet_and_kernel_logs_sit_beside_notebooks(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    exe = Path(sys.executable).parent / "workbench"
    result = subprocess.run([str(exe), "sweep", str(tiny(tmp_path)), "--runs-dir", str(tmp_path / "runs")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert [ln for ln in console.splitlines() if any(n in ln for n in NOISE)] == []
    assert "recommended: trial" in console and "run directory:" in console
    run_dir = tmp_path / "runs" / "tiny" / "tiny"
    notebooks = list(run_dir.glob("trials/*/trial.ipynb")) + list(run_dir.glob("baselines/*/trial.ipynb"))
    assert len(notebooks) == 4
    assert all((nb.parent / notebook.KERNEL_LOG).exists() for nb in notebooks)
    # TensorFlow's start-up lines went to the baseline kernel's log instead of the terminal
    logs = "".join((nb.parent / notebook.KERNEL_LOG).read_text() for nb in notebooks)
    assert logs == "" or any(n in logs for n in NOISE)


@pytest.mark.slow
def test_ctrl_c_leaves_no_kernel_behind(tmp_path):
    exp = tiny(tmp_path, "intr", bits="[32, 16, 8]", n_trials=3)
    exe = Path(sys.executable).parent / "workbench"
    # (SIGINT back to its default in the child: a background job inherits it ignored)
    proc = subprocess.Popen([str(exe), "sweep", str(exp), "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    kernels: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and len(kernels) < 2:  # the running kernel and the spare
        kernels |= kernel_pids(proc.pid)
        time.sleep(0.1)
    assert len(kernels) >= 2, "the sweep never had a kernel running and one ahead"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    time.sleep(0.5)
    assert alive(kernels) == set()


def test_architecture_names_only_files_that_exist():
    import re

    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:workbench|notebooks|tools|tests)/[\w./]*)`", text))
    assert len(named) > 20
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "workbench").rglob("*.py")
               if p.name != "__init__.py"}
    assert sorted(modules - named) == []  # and every module of the package is in it
