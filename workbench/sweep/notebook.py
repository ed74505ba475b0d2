"""Execute a trial notebook with papermill and read the metrics it leaves beside itself.

Every trial runs in a fresh kernel (so imports, threads and memory are those of a clean
deployment process) whose working directory is the trial's directory. Starting a kernel costs
about a second, so a sweep keeps one kernel booting ahead (:class:`Kernels`): the kernel of
the next trial starts while the current trial runs, and is used by exactly one notebook. It
boots under the machine-wide measurement lock, so its burst of CPU never overlaps a trial's
timed calls (on a 2-core machine it would show in every threads=2 latency). While it boots it
also imports the trial code (``workbench.trial``: numpy, pydantic), so a cached
trial waits for neither.

How a pre-started kernel gets the trial's directory: it is started in a neutral directory (the
run directory's ``trials/``), before the next trial is known, with the sweep's environment
(minus ``WORKBENCH_STORAGE``); when a trial takes it, the workbench sends it a silent
``os.chdir(<trial dir>)`` (not a notebook cell, no execution count) before papermill runs the
notebook. The executed notebook is therefore exactly what ``papermill --cwd <trial dir>``
produces, and re-runs the same way. Unlike papermill's ``cwd=``, this never changes the
sweep process's own working directory.

A kernel's stdout and stderr (C++ start-up lines of TensorFlow, absl, oneDNN notices) go to
``kernel.log`` beside the executed notebook, not to the terminal. Kernels are shut down when
their notebook ends, and the spare one when the sweep ends (normally, on an error, on Ctrl-C).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from workbench.core.errors import TrialFailed
from workbench.measure import timing
from workbench.results.storage import ENV

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
TRIAL_NOTEBOOK = NOTEBOOKS / "trial.ipynb"
METRICS_FILE = "metrics.json"
KERNEL_LOG = "kernel.log"
ENGINE = "workbench"  # the papermill engine registered below: nbclient on a kernel we started
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR",  # no start-up chatter per trial
               "--HistoryManager.hist_file=:memory:",  # no shared history database to lock
               # Imported while the kernel boots (ahead of its trial), not while the trial waits;
               # the notebook's own `from workbench import trial` then finds it loaded.
               "--IPKernelApp.exec_lines=import workbench.trial"]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def kernel_env() -> dict[str, str]:
    """The environment of a trial kernel: the sweep's, with TensorFlow's C++ logging at
    warnings and up, and without the storage URL (the kernel has no use for the password)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Kernel:
    """One started kernel process, its log file and the directory it was started in."""

    def __init__(self, cwd: Path, log: Path):
        from jupyter_client import KernelManager

        self.cwd, self.log = cwd, log
        self.km = KernelManager(kernel_name="python3")
        # nbclient drives the kernel asynchronously: hand it an asynchronous client.
        self.km.client_class = "jupyter_client.asynchronous.AsyncKernelClient"
        with open(log, "ab") as fh:  # the child keeps its own descriptor
            self.km.start_kernel(extra_arguments=KERNEL_ARGS, cwd=str(cwd), env=kernel_env(),
                                 stdout=fh, stderr=fh)

    @property
    def pid(self) -> int | None:
        return getattr(self.km.provisioner, "pid", None)

    def move_log(self, out_dir: Path) -> None:
        """Put the log beside the notebook (a rename: the kernel keeps writing to it)."""
        target = out_dir / KERNEL_LOG
        if self.log != target:
            os.replace(self.log, target)
            self.log = target

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the kernel answers (its start-up imports, ``KERNEL_ARGS``, are done)."""
        kc = self.km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=timeout_s)
        finally:
            kc.stop_channels()

    def shutdown(self) -> None:
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


class Kernels:
    """Fresh kernels, one per notebook, each started while the previous notebook runs.

    Use as a context manager (or call :meth:`close`): the kernel booting ahead is shut down
    when the block ends, however it ends. ``spare_dir`` must be on the file system of the
    output directories (the kernel's log file is renamed into them).
    """
    def __init__(self, spare_dir: str | Path, ahead: bool = True):
        self.spare_dir = Path(spare_dir).resolve()
        self.ahead = ahead
        self._spare: Kernel | None = None
        self._booting: threading.Thread | None = None

    def _start(self) -> Kernel:
        self.spare_dir.mkdir(parents=True, exist_ok=True)
        return Kernel(self.spare_dir, self.spare_dir / f".kernel-{uuid.uuid4().hex[:8]}.log")

    def _boot_spare(self) -> None:
        """Start the spare kernel and wait for its imports while holding the machine-wide
        measurement lock: a booting kernel is a burst of CPU on a small machine, so the running
        trial's timed calls wait for it (or it waits for them), never overlap it."""
        try:
            with timing.exclusive():
                kernel = self._start()
                self._spare = kernel
                kernel.wait_ready()
        except Exception:  # noqa: BLE001 - the next take() starts a kernel of its own
            spare, self._spare = self._spare, None
            if spare is not None:
                spare.shutdown()
                spare.log.unlink(missing_ok=True)

    def _join(self) -> None:
        if self._booting is not None:
            self._booting.join()
            self._booting = None

    def take(self, out_dir: Path) -> Kernel:
        """A kernel for the notebook going to ``out_dir``; the next one starts booting now."""
        self._join()
        kernel = self._spare or self._start()
        self._spare = None
        kernel.move_log(out_dir)
        if self.ahead:
            self._booting = threading.Thread(target=self._boot_spare, name="workbench-kernel-ahead",
                                             daemon=True)
            self._booting.start()
        return kernel

    def close(self) -> None:
        self._join()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.shutdown()
            spare.log.unlink(missing_ok=True)

    def __enter__(self) -> "Kernels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _register_engine() -> None:
    """Register papermill engine ``workbench``: papermill's nbclient engine, run on a kernel
    started by :class:`Kernel` and moved into the trial's directory before the first cell."""
    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    if ENGINE in papermill_engines._engines:
        return

    class Client(PapermillNotebookClient):
        def __init__(self, nb_man, chdir: str | None = None, **kw):
            super().__init__(nb_man, **kw)
            self._chdir = chdir

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            if self._chdir:
                msg_id = kc.execute(f"__import__('os').chdir({self._chdir!r})", silent=True,
                                    store_history=False)
                await self.async_wait_for_reply(msg_id)
            return kc

        start_new_kernel_client = run_sync(async_start_new_kernel_client)

        def execute(self, **kwargs):
            try:
                return super().execute(**kwargs)
            finally:  # the kernel is ours (not nbclient's), its client channels are not
                if self.kc is not None:
                    self.kc.stop_channels()

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     **kwargs):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                                 kernel_name=kernel_name, log=logger, log_output=log_output,
                                 stdout_file=stdout_file, stderr_file=stderr_file)
            return Client(nb_man, **final).execute()

    papermill_engines.register(ENGINE, Engine)


def _cancel_pending() -> None:
    """Cancel what Ctrl-C left half-done in nbclient's event loop (its cell task would report
    "Kernel died" as a traceback at exit, once the kernel is shut down)."""
    import asyncio

    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending and not loop.is_running():
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def execute(params: Mapping[str, Any], out_dir: str | Path, *, timeout_s: float | None = None,
            notebook: str | Path | None = None, kernels: Kernels | None = None) -> dict[str, Any]:
    """Run ``notebook`` with ``params`` into ``out_dir`` and return its ``metrics.json``.

    ``kernels`` supplies a kernel started ahead; without it a kernel is started here. Raises
    :class:`TrialFailed` naming the executed notebook and the error's last line when the
    notebook raises, times out or its kernel dies. The executed notebook is always kept, with
    the kernel's own output in ``kernel.log`` beside it.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    _register_engine()
    notebook = notebook or TRIAL_NOTEBOOK  # looked up at call time, so tests can swap it
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / Path(notebook).name
    metrics_path = out_dir / METRICS_FILE
    metrics_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    kernel = kernels.take(out_dir) if kernels else Kernel(out_dir, out_dir / KERNEL_LOG)
    try:
        pm.execute_notebook(
            str(notebook), str(output), parameters=dict(params, metrics_path=METRICS_FILE),
            engine_name=ENGINE, km=kernel.km, chdir=None if kernel.cwd == out_dir else str(out_dir),
            kernel_name="python3", progress_bar=False, log_output=False,
            execution_timeout=int(timeout_s) if timeout_s else None,
        )
    except KeyboardInterrupt:
        _cancel_pending()
        raise
    except PapermillExecutionError as err:
        raise TrialFailed(f"{err.ename}: {_last_line(err.evalue)}", str(output)) from None
    except TimeoutError:  # nbclient's CellTimeoutError is a TimeoutError
        raise TrialFailed(f"timed out after {timeout_s:g} s", str(output)) from None
    except Exception as err:  # a dead kernel or any other papermill/nbclient error
        name = type(err).__name__
        reason = "kernel died" if "DeadKernel" in name else f"{name}: {_last_line(err)}"
        raise TrialFailed(reason, str(output)) from None
    finally:
        kernel.shutdown()
    if not metrics_path.exists():
        raise TrialFailed(f"notebook finished without writing {METRICS_FILE}", str(output))
    metrics = json.loads(metrics_path.read_text())
    metrics["notebook"] = str(output)
    metrics["notebook_seconds"] = time.perf_counter() - t0
    return metrics
