"""Sweeps on a Dask cluster: ``workbench sweep CONFIG --dask ADDRESS``.

The sweep process (the driver) keeps the study: it does every ask and every tell, so there is
one asker (exactly ``n_trials``, no ask lock), the storage and its credentials stay on the
driver, and the storage code is the one of a local sweep. Dask workers only run trial
notebooks: a task is one notebook, run by :func:`workbench.sweep.notebook.execute` (the local
sweep's code path) on a kernel the worker started ahead, in a scratch directory of the worker;
it returns the metrics and every file of the trial's directory (the executed notebook,
``kernel.log``, ``monitor.csv``...), which the driver writes to ``trials/<n>/`` of the run
directory. The run directory therefore looks the same as a local sweep's, and the decision
and the report run on the driver as usual.

- ADDRESS: ``tcp://HOST:PORT`` (or ``tls://``) of a running scheduler, or ``local:N`` for a
  LocalCluster of N worker processes (one thread each) on 127.0.0.1, without a dashboard.
- A worker lost mid-trial: the scheduler gives its task to another worker, so the trial is
  re-run, not lost (after ``distributed.scheduler.allowed-failures`` lost workers it is FAIL,
  "worker lost"). A driver that dies leaves its trials RUNNING under its own host and pid; the
  next ``workbench sweep`` recovers and retries them like a local sweep's.
- Each trial records the worker that measured it (``worker``: host, pid, Dask address).
- Honest timing: one timed section per machine at a time, through the machine-wide measurement
  lock (:func:`workbench.measure.timing.exclusive`, a file in the temp directory) that every
  trial kernel on that machine takes; building and converting variants overlap freely. A
  worker process runs one notebook at a time (:class:`TrialRunner`'s lock), and the driver
  keeps one trial per worker in flight.
- Code: every worker needs the project installed, the same version: :func:`code_version` (the
  version and a hash of the package's sources and the trial notebook) is compared when the
  sweep connects and again by the worker plug-in on every worker that joins later.
- Model and data are not sent: a file model or data set must be at the same path on every
  worker (a shared file system, or a copy), with the same content (checked by hash before
  anything is created). Builtin models and data sets are built by each worker into its own
  content-addressed cache (``WORKBENCH_CACHE_DIR``), as on one machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

from distributed import Client, KilledWorker, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

import workbench
from workbench.config import Experiment
from workbench.core import fingerprint
from workbench.core.cache import file_hash, key
from workbench.core.errors import ConfigError, TrialFailed, WorkbenchError, first_line
from workbench.measure import reuse
from workbench.results.storage import ENV, heartbeat
from workbench.sweep import baselines, loop, notebook
from workbench.sweep.study import trial_settings

PLUGIN = "workbench-trials"
CONNECT_TIMEOUT_S = 10
WORKERS_TIMEOUT_S = 60  # workers still starting (imports on a busy machine)
ADDRESS = re.compile(r"^(tcp|tls)://[^/:\s]+:\d+$|^local:\d+$")
USAGE = "expected tcp://HOST:PORT (or tls://) of a running Dask scheduler, or local:N (N worker processes here)"


def check_address(address: str) -> None:
    """Refuse a malformed ``--dask`` before anything is loaded or started."""
    if not ADDRESS.match(address or ""):
        raise ConfigError(f"--dask {address!r}: {USAGE}")
    if address.startswith("local:") and int(address.removeprefix("local:")) < 1:
        raise ConfigError(f"--dask {address}: local:N needs at least 1 worker")


def code_version() -> str:
    """The workbench a process runs: its version and a hash of its sources and trial notebook
    (two checkouts of one version with different code differ)."""
    pkg = Path(workbench.__file__).parent
    sources = [(str(p.relative_to(pkg)), file_hash(p)) for p in sorted(pkg.rglob("*.py"))]
    return f"{workbench.__version__}+{key(sources, file_hash(notebook.TRIAL_NOTEBOOK))}"


def _worker_id(worker) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "address": worker.address}


class TrialRunner(WorkerPlugin):
    """The worker plug-in of one sweep: checks the code, keeps a kernel booting ahead, and
    runs one notebook at a time in ``<worker's local directory>/workbench/<run>/``.

    Registered by the driver for the duration of a sweep (also on workers that join later);
    its teardown shuts the kernels down. Kernels inherit the worker's environment, so the
    storage URL is dropped from it and the run's reuse directory set before the first starts.
    """
    name = PLUGIN

    def __init__(self, version: str, run: str):
        self.version, self.run = version, run

    def setup(self, worker) -> None:
        here = code_version()
        if here != self.version:
            raise WorkbenchError(f"dask worker {worker.address} ({socket.gethostname()}): workbench "
                                 f"{here} is installed, the sweep runs {self.version}; install the "
                                 "same version on every worker")
        os.environ.pop(ENV, None)  # the storage's credentials stay on the driver
        self.dir = Path(worker.local_directory).resolve() / "workbench" / self.run
        self.measured = self.dir / "measured"
        self.measured.mkdir(parents=True, exist_ok=True)
        os.environ[reuse.REUSE_ENV] = str(self.measured)
        self.hardware = fingerprint.collect().get("hardware_id")
        self.lock = threading.Lock()
        self.kernels = notebook.Kernels(self.dir / "trials")
        self.kernels.start_ahead()

    def teardown(self, worker) -> None:
        if hasattr(self, "kernels"):  # set up (not refused)
            self.kernels.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def run_notebook(name: str, params: dict, timeout_s: float | None, measured: dict[str, str]) -> dict:
    """The Dask task: run one trial notebook on this worker and hand back what it left.

    ``measured``: the run's reuse entries so far (file name -> JSON text); those measured on
    this worker's hardware are offered to the trial, as on one machine. Returns the metrics or
    the failure, every file of the trial's directory (name -> bytes) and this worker's id.
    """
    worker = get_worker()
    runner = worker.plugins[PLUGIN]
    out_dir = runner.dir / "trials" / name
    with runner.lock:  # one notebook at a time in this process (one kernel ahead, one lock)
        for entry, text in measured.items():
            path = runner.measured / entry
            fp = json.loads(text)["metrics"].get("fingerprint") or {}
            if not path.exists() and fp.get("hardware_id") == runner.hardware:
                path.write_text(text)
        shutil.rmtree(out_dir, ignore_errors=True)  # a task run again after a lost connection
        metrics, error = None, None
        try:
            metrics = notebook.execute(params, out_dir, timeout_s=timeout_s, kernels=runner.kernels)
        except TrialFailed as err:
            error = err.reason
        files = {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"metrics": metrics, "error": error, "files": files, "worker": _worker_id(worker)}


def _check_paths(paths: dict[str, str]) -> dict[str, str]:
    """On a worker: the content hash of each path, or why it cannot be read."""
    out = {}
    for field, path in paths.items():
        p = Path(path)
        out[field] = file_hash(p) if p.exists() else "missing"
    return out


class Launcher:
    """A Dask cluster that runs a sweep's notebooks; use as a context manager.

    Connecting checks the address (one line, exit 2, if no scheduler answers) and the code of
    the workers present; :meth:`check` the experiment's files on them; :meth:`run` the baselines
    and trials.
    """

    def __init__(self, address: str):
        check_address(address)
        self.address, self.cluster = address, None
        try:
            if address.startswith("local:"):
                with warnings.catch_warnings():  # its HTTP server (127.0.0.1) takes a free port
                    warnings.filterwarnings("ignore", message="Port .* is already in use")
                    self.cluster = LocalCluster(n_workers=int(address.removeprefix("local:")),
                                                threads_per_worker=1, processes=True, host="127.0.0.1",
                                                dashboard_address=None, scheduler_port=0,
                                                silence_logs=logging.CRITICAL)  # errors: one line each
                self.client = Client(self.cluster)
            else:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except OSError as err:
            self.close()
            raise ConfigError(f"--dask {address}: no Dask scheduler answered ({first_line(err)})") from None
        self._wait_for_workers()
        self._check_code()

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + WORKERS_TIMEOUT_S
        while not self.client.scheduler_info(n_workers=-1)["workers"]:
            if time.monotonic() > deadline:
                self.close()
                raise ConfigError(f"--dask {self.address}: the scheduler has no workers "
                                  f"(none joined in {WORKERS_TIMEOUT_S} s)")
            time.sleep(0.2)

    def _check_code(self) -> None:
        """The same workbench on every worker, checked before any work (a worker without it
        installed cannot even run the check)."""
        mine = code_version()
        try:
            theirs = self.client.run(code_version)
        except Exception as err:  # noqa: BLE001 - e.g. ModuleNotFoundError: workbench
            self.close()
            raise WorkbenchError(f"--dask {self.address}: a worker cannot run workbench "
                                 f"({type(err).__name__}: {first_line(err)}); install it on every worker") from None
        other = {w: v for w, v in theirs.items() if v != mine}
        if other:
            self.close()
            w, v = next(iter(other.items()))
            raise WorkbenchError(f"--dask {self.address}: worker {w} runs workbench {v}, this sweep "
                                 f"{mine} ({len(other)} of {len(theirs)} workers differ); install "
                                 "the same version on every worker")

    def slots(self) -> int:
        """Trials in flight: one per worker now in the cluster."""
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def check(self, exp: Experiment) -> None:
        """Model and data files are not sent: each must be on every worker at the same path
        with the same content (a shared or copied path)."""
        settings = trial_settings(exp)
        paths = {f: settings[f] for f in ("model", "data", "distill_student")
                 if settings.get(f) and Path(settings[f]).exists()}
        if not paths:
            return
        mine = _check_paths(paths)
        for worker, theirs in self.client.run(_check_paths, paths).items():
            for field, digest in theirs.items():
                if digest != mine[field]:
                    what = "is missing" if digest == "missing" else "has other content"
                    raise ConfigError(f"{field}: {paths[field]} {what} on dask worker {worker}; model "
                                      "and data are not sent: put them at the same path on every "
                                      "worker (a shared file system or a copy)")

    def run(self, exp: Experiment, run_dir: Path, study, target: int, log, progress: bool) -> None:
        """The baselines, then the trials, on the cluster's workers."""
        plugin = TrialRunner(code_version(), key(str(run_dir), os.getpid(), id(self)))
        self.run_key = plugin.run
        try:
            self.client.register_plugin(plugin, name=PLUGIN)
        except WorkbenchError:
            raise
        except Exception as err:  # noqa: BLE001 - a worker failed its set-up: one line
            raise WorkbenchError(f"--dask {self.address}: a worker could not start the sweep's "
                                 f"plug-in ({type(err).__name__}: {first_line(err)})") from None
        try:
            baselines.run(exp, run_dir, log, execute=self.execute)
            self.work(exp, run_dir, study, target, log, progress)
        finally:
            try:  # the workers' kernels are shut down; the cluster may be gone already
                self.client.unregister_worker_plugin(PLUGIN)
            except Exception:  # noqa: BLE001 - closing the client ends them too
                pass

    def submit(self, name: str, params: dict, run_dir: Path, timeout_s: float | None):
        measured = {p.name: p.read_text() for p in sorted((run_dir / "measured").glob("*.json"))}
        return self.client.submit(run_notebook, name, params, timeout_s, measured,
                                  key=f"workbench-{self.run_key}-{name}", pure=False)

    def collect(self, future, out_dir: Path) -> tuple[dict | None, TrialFailed | None, dict | None]:
        """Write a finished task's files into ``out_dir``; its metrics or failure, its worker."""
        try:
            result = future.result()
        except KilledWorker as err:
            return None, TrialFailed(f"worker lost, each time it ran ({first_line(err)})", ""), None
        except Exception as err:  # noqa: BLE001 - the task itself failed (not the notebook)
            return None, TrialFailed(f"{type(err).__name__}: {first_line(err)}", ""), None
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, blob in result["files"].items():
            (out_dir / name).write_bytes(blob)
        nb = str(out_dir / Path(notebook.TRIAL_NOTEBOOK).name)
        metrics = result["metrics"]
        if metrics is not None:
            metrics["notebook"] = nb
        error = TrialFailed(result["error"], nb) if result["error"] is not None else None
        return metrics, error, result["worker"]

    def execute(self, params: dict, out_dir: Path, *, timeout_s: float | None = None,
                kernels=None) -> dict:
        """:func:`notebook.execute`, on a worker (the baselines)."""
        out_dir = Path(out_dir)
        future = self.submit(f"{out_dir.parent.name}-{out_dir.name}", params, out_dir.parents[1], timeout_s)
        metrics, error, _ = self.collect(future, out_dir)
        if error is not None:
            raise error
        return metrics

    def work(self, exp: Experiment, run_dir: Path, study, target: int, log, progress: bool) -> None:
        """Ask, submit, tell: one trial per worker in flight, until the study holds ``target``."""
        bar = loop.progress_bar(study, exp, target, progress,
                                desc=f"sweep {exp.name} (dask {self.address})")
        state = loop.Progress(exp)
        running: dict = {}  # future -> (trial, params, its heartbeat)
        done = as_completed()
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < self.slots():
                    asked = loop.next_trial(study, exp, target, state, log)
                    if asked is None:
                        exhausted = True
                        break
                    trial, params = asked
                    beat = ExitStack()
                    beat.enter_context(heartbeat(study, trial))
                    future = self.submit(f"trial-{trial.number}", params, run_dir, exp.trial_timeout_s)
                    running[future] = (trial, params, beat)
                    done.add(future)
                if not running:
                    break
                future = next(done)
                trial, params, beat = running.pop(future)
                beat.close()
                metrics, error, worker = self.collect(future, run_dir / "trials" / str(trial.number))
                if worker is not None:
                    trial.set_user_attr("worker", worker)
                if error is not None:
                    log(f"trial {trial.number} failed: {error.reason} (notebook: {error.notebook})")
                loop.record_trial(study, trial, exp, run_dir, params, metrics, error, state, bar, log)
        finally:
            for future, (_, _, beat) in running.items():  # left RUNNING: the next sweep retries them
                future.cancel()
                beat.close()
            bar.close()

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
