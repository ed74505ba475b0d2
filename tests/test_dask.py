"""Sweeps on a Dask cluster (``workbench sweep --dask``): real Dask, real notebooks, loopback only.

A LocalCluster (``local:N``) and a scheduler and workers started with Dask's own CLI
(``dask scheduler --host 127.0.0.1``, ``dask worker --nworkers 2``); a worker killed mid-trial;
no process left behind (kernels and workers are found by their directories under tmp_path).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import psutil
import pytest
from conftest import ROOT, run_cli

from workbench.core.errors import WorkbenchError
from workbench.results.storage import open_storage
from workbench.sweep import dask as sweep_dask

BIN = Path(sys.executable).parent


def write_grid(tmp_path: Path, name: str, min_seconds: float = 0.05) -> Path:
    """Three distinct configurations (fp32, static and dynamic int8), measured quickly."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsampler: grid\n"
                    f"measurement: {{warmup: 2, min_runs: 20, min_seconds: {min_seconds}, max_seconds: 8}}\n"
                    "search_space:\n  bits: [32, 8]\n  int8_mode: [static, dynamic]\n"
                    "  batch_size: 1\n  threads: 1\n")
    return path


def ours(tmp_path: Path) -> list[psutil.Process]:
    """Processes started for this test: whose command line, working directory or environment
    (``DASK_TEMPORARY_DIRECTORY``) names tmp_path."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "environ"]):
        try:
            text = " ".join([*(p.info["cmdline"] or []), p.info["cwd"] or "",
                             *(p.info["environ"] or {}).values()])
        except psutil.Error:
            continue
        helper = p.info["cmdline"] and "multiprocessing.resource_tracker" in " ".join(p.info["cmdline"])
        if str(tmp_path) in text and p.pid != os.getpid() and not (helper and p.ppid() == os.getpid()):
            found.append(p)  # (the test process's own multiprocessing helper lives as long as it)
    return found


def assert_none_left(tmp_path: Path, wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    while (left := ours(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [" ".join(p.cmdline()) for p in left if p.is_running()]


def sweep_cli(tmp_path: Path, exp: Path, address: str, **popen) -> subprocess.Popen:
    """``workbench sweep EXP --dask ADDRESS``; a LocalCluster's workers keep their scratch
    directories under tmp_path (``DASK_TEMPORARY_DIRECTORY``), so their kernels can be found."""
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "dask-local")}
    return subprocess.Popen([str(BIN / "workbench"), "sweep", str(exp), "--dask", address, "--quiet",
                             "--runs-dir", str(tmp_path / "runs")], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def trials_of(run_dir: Path, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{run_dir / 'study.db'}"))
    return study.trials


def check_run(tmp_path: Path, name: str, workers: int = 2) -> list:
    """Every configuration measured once, by the cluster's workers, with its files on the driver."""
    run_dir = tmp_path / "runs" / name / name
    trials = trials_of(run_dir, name)
    counted = [t for t in trials if "interrupted" not in t.user_attrs and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state.name == "COMPLETE" for t in counted)
    assert len({json.dumps(t.user_attrs["params"], sort_keys=True) for t in counted}) == 3
    assert len({t.user_attrs["worker"]["pid"] for t in counted}) >= workers  # spread over the workers
    assert all(t.user_attrs["worker"]["pid"] != os.getpid() for t in counted)
    for t in counted:
        d = run_dir / "trials" / str(t.number)
        assert {"trial.ipynb", "kernel.log", "metrics.json"} <= {p.name for p in d.iterdir()}
        assert t.user_attrs["notebook"] == str(d / "trial.ipynb")
    assert (run_dir / "results.csv").exists() and (run_dir / "best.json").exists()
    assert len(list((run_dir / "baselines").glob("*/trial.ipynb"))) == 2  # tensorflow, onnxruntime
    return counted


@pytest.mark.parametrize("address", ["bogus", "tcp://127.0.0.1", "http://127.0.0.1:8786", "local:0", "local:two"])
def test_a_bad_address_is_one_line_before_any_work(tmp_path, address):
    exp = write_grid(tmp_path, "bad")
    result = run_cli("sweep", str(exp), "--dask", address, "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: --dask") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_dask_and_workers_are_one_or_the_other(tmp_path):
    exp = write_grid(tmp_path, "both")
    result = run_cli("sweep", str(exp), "--dask", "local:1", "--workers", "2", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "--workers and --dask" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_worker_with_other_code_is_refused(tmp_path, monkeypatch):
    """The worker plug-in compares the code it runs with the driver's (here: a changed version)."""
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask-local"))
    with sweep_dask.Launcher("local:1") as launcher:
        with pytest.raises(WorkbenchError, match="install the same version on every worker"):
            launcher.client.register_plugin(sweep_dask.TrialRunner("0.0.0+other", "x"),
                                            name=sweep_dask.PLUGIN)
        here = launcher.client.run(sweep_dask.code_version)
        assert set(here.values()) == {sweep_dask.code_version()}
    assert_none_left(tmp_path)


def test_model_files_are_checked_on_every_worker(tmp_path, monkeypatch):
    """Model and data are not sent: each worker reports the content hash of the experiment's
    files at their paths (or that they are missing), compared with the driver's before any work."""
    from workbench import config

    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask-local"))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64))
    exp = config.load(write_grid(tmp_path, "files"))
    exp = exp.model_copy(update={"data": str(data)})
    with sweep_dask.Launcher("local:1") as launcher:
        launcher.check(exp)  # the same path and content: fine
        theirs = launcher.client.run(sweep_dask._check_paths, {"data": str(data), "model": str(tmp_path / "no")})
        assert [v["model"] for v in theirs.values()] == ["missing"]
        assert [v["data"] for v in theirs.values()] == [sweep_dask._check_paths({"data": str(data)})["data"]]
    assert_none_left(tmp_path)


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("sweep", str(write_grid(tmp_path, "gone")), "--dask", f"tcp://127.0.0.1:{port}",
                     "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "no Dask scheduler answered" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_local_cluster_runs_a_grid_sweep(tmp_path):
    proc = sweep_cli(tmp_path, write_grid(tmp_path, "local2"), "local:2")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    check_run(tmp_path, "local2", workers=2)
    assert "recommended:" in out
    assert_none_left(tmp_path)


@contextlib.contextmanager
def dask_cli(tmp_path: Path, nworkers: int = 2, tls: list[str] = (), protocol: str = "tcp"):
    """A scheduler and ``nworkers`` worker processes (one nanny each), started with Dask's CLI
    on loopback; stopped (process groups) and checked gone at the end."""
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--protocol", protocol, "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file), *tls],
                              cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith(f"{protocol}://127.0.0.1:")
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", str(nworkers),
                                       "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                       "--local-directory", str(tmp_path / "dask-workers"), *tls],
                                      cwd=tmp_path, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert_none_left(tmp_path)


@pytest.fixture
def cluster(tmp_path):
    with dask_cli(tmp_path) as address:
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
        yield address


@pytest.mark.slow
def test_external_scheduler_and_dask_workers(tmp_path, cluster):
    proc = sweep_cli(tmp_path, write_grid(tmp_path, "ext"), cluster)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    check_run(tmp_path, "ext", workers=2)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_reruns_the_trial(tmp_path, cluster):
    from distributed import Client

    proc = sweep_cli(tmp_path, write_grid(tmp_path, "kill", min_seconds=4.0), cluster)
    killed = None
    try:
        with Client(cluster, timeout=30) as client:
            deadline = time.monotonic() + 600
            while killed is None and time.monotonic() < deadline and proc.poll() is None:
                running = [(w, k) for w, keys in client.processing().items() for k in keys if "-trial-" in k]
                if not running:
                    time.sleep(0.2)
                    continue
                worker, key = running[0]
                time.sleep(2.0)  # its notebook has started: the timed calls take 4 s
                if key not in client.processing().get(worker, ()):
                    continue
                pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed = (int(key.rsplit("-", 1)[1]), pid)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, "no trial was seen running"
    assert proc.returncode == 0, err
    number, pid = killed
    trials = check_run(tmp_path, "kill", workers=2)
    rerun = next(t for t in trials if t.number == number)
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["worker"]["pid"] != pid


@pytest.mark.slow
def test_tls_cluster_as_the_readme_shows_it(tmp_path):
    """Dask's CLI with TLS (a CA and one certificate here), the sweep's client configured by
    the README's environment variables; a plain tcp:// client is refused."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "node.key",
            "-out", "node.csr")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.cnf", "-out", "node.pem")
    tls = ["--tls-ca-file", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "node.pem"),
           "--tls-key", str(tmp_path / "node.key")]
    probe = "import sys; from workbench.sweep.dask import Launcher; print(Launcher(sys.argv[1]).slots())"
    with dask_cli(tmp_path, nworkers=1, tls=tls, protocol="tls") as address:
        env = {**os.environ, "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
               "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tmp_path / "ca.pem"),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(tmp_path / "node.pem"),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tmp_path / "node.key")}
        ok = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True,
                            text=True, timeout=120)
        assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr[-2000:]
        plain = run_cli("sweep", str(write_grid(tmp_path, "plain")), "--dask", address.replace("tls://", "tcp://"),
                        "--runs-dir", str(tmp_path / "runs"))
        assert plain.returncode == 2 and "no Dask scheduler answered" in plain.stderr
        assert not (tmp_path / "runs").exists()
