"""Execute a trial notebook with papermill and read the metrics it leaves beside itself.

Every trial runs in a fresh kernel (so imports, threads and memory are those of a clean
deployment process) whose working directory is the trial's directory. Starting a kernel costs
about a second, so a sweep keeps one kernel booting ahead (:class:`Kernels`): the kernel of
the next trial starts while the current trial runs, and is used by exactly one notebook. It
boots under the machine-wide measurement lock, so its burst of CPU never overlaps a trial's
timed calls (on a 2-core machine it would show in every threads=2 latency). Once up, it
imports what a trial imports (``PRELOAD``: numpy, pydantic, ``workbench.trial``,
onnxruntime) one module at a time, each under the lock again: the running trial, which
waits for whatever the kernel ahead does under the lock, waits for one import at most.

How a pre-started kernel gets the trial's directory: it is started in a neutral directory (the
run directory's ``trials/``), before the next trial is known, with the sweep's environment
(minus ``WORKBENCH_STORAGE``); when a trial takes it, the workbench sends it a silent
``os.chdir(<trial dir>)`` (not a notebook cell, no execution count) before papermill runs the
notebook. The executed notebook is therefore exactly what ``papermill --cwd <trial dir>``
produces, and re-runs the same way. Unlike papermill's ``cwd=``, this never changes the
sweep process's own working directory.

A kernel's stdout and stderr (C++ start-up lines of TensorFlow, absl, oneDNN notices) go to
``kernel.log`` beside the executed notebook, not to the terminal. Kernels are killed when
their notebook ends (jupyter_client's clean-up of their connection files follows in the
background), and the spare one when the sweep ends (normally, on an error, on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
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
# The kernel's command: ipykernel_launcher's, without ipykernel's debugger (importing debugpy
# for it is 0.12 s of a kernel's 0.4 s start, and no debugger attaches to a trial's kernel).
LAUNCHER = """\
import sys
del sys.path[0]  # '', as ipykernel_launcher does; the kernel puts it back
sys.modules["debugpy"] = None  # ipykernel then starts without its debugger
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
app.initialize()
del sys.modules["debugpy"]  # importable again, for the notebook
app.start()
"""
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR",  # no start-up chatter per trial
               "--HistoryManager.hist_file=:memory:"]  # no shared history database to lock
# What a trial imports, imported by the kernel booting ahead once it is up (one module at a time,
# see Kernels._boot_spare); the notebook's own imports then find them loaded. onnxruntime is the
# default runtime; TensorFlow stays lazy (a cached trial never imports it).
PRELOAD = ("numpy", "pydantic", "workbench.trial", "onnxruntime")


def _thread(target, name: str) -> threading.Thread:
    """A started daemon thread running ``target``, then closing the asyncio event loop that
    jupyter_client's synchronous calls made for the thread (left to the garbage collector, a
    loop per trial piles up, and at times is closed with an "Exception ignored" traceback)."""
    def run() -> None:
        try:
            target()
        finally:
            try:
                loop = asyncio.get_event_loop_policy().get_event_loop()
            except RuntimeError:  # this thread never had one
                return
            if not loop.is_running():
                loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


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
        spec = self.km.kernel_spec
        if spec.argv[1:3] == ["-m", "ipykernel_launcher"]:
            spec.argv = [spec.argv[0], "-c", LAUNCHER, *spec.argv[3:]]
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

    def client(self):
        """A blocking client on the shell channel only, for the requests below."""
        kc = self.km.blocking_client()
        kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        return kc

    def _ask(self, kc, send, timeout_s: float, again: bool = False) -> dict:
        """Send a shell request (``send()`` returns its id) and return its reply; with
        ``again``, send it again each second until one is answered."""
        deadline = time.monotonic() + timeout_s
        sent = {send()}
        while True:
            try:
                reply = kc.get_shell_msg(timeout=1.0)
            except queue.Empty:
                if not self.km.is_alive():
                    raise RuntimeError("kernel died") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kernel did not answer in {timeout_s:g} s") from None
                if again:
                    sent.add(send())
                continue
            if reply["parent_header"].get("msg_id") in sent:
                return reply

    def wait_ready(self, kc, timeout_s: float = 120.0) -> None:
        """Block until the kernel answers ``kernel_info`` (it has started).

        The shell channel only: jupyter_client's ``wait_for_ready`` then also waits for 0.2 s
        of silence on IOPub, which nobody reads here, while the boot holds the measurement
        lock (and a trial waiting to time its calls waits for it too)."""
        self._ask(kc, kc.kernel_info, timeout_s, again=True)

    def preload(self, kc, module: str, timeout_s: float = 120.0) -> None:
        """Import ``module`` in the kernel: a silent request (no cell, no execution count, no
        name bound in the notebook's namespace); an import that fails is left to the trial."""
        self._ask(kc, lambda: kc.execute(f"__import__({module!r})", silent=True,
                                         store_history=False), timeout_s)

    def kill(self) -> None:
        """SIGKILL the kernel's process group and reap it: gone in a few milliseconds
        (jupyter_client's ``shutdown_kernel(now=True)`` does the same, then polls for the
        process every 0.1 s)."""
        proc = getattr(self.km.provisioner, "process", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            self.km.signal_kernel(signal.SIGKILL)
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - shutdown() below kills it its own way
            pass

    def shutdown(self) -> None:
        """Kill the kernel, then let jupyter_client clean up (connection file, sockets)."""
        if self.km.has_kernel:
            self.kill()
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
        self._closing: list[threading.Thread] = []
        self._taking = threading.Event()  # set while take() or close() waits for the boot

    def _start(self) -> Kernel:
        self.spare_dir.mkdir(parents=True, exist_ok=True)
        return Kernel(self.spare_dir, self.spare_dir / f".kernel-{uuid.uuid4().hex[:8]}.log")

    def _boot_spare(self) -> None:
        """Start the spare kernel, then import ``PRELOAD`` in it, holding the machine-wide
        measurement lock: a booting kernel is a burst of CPU on a small machine, so the running
        trial's timed calls wait for it (or it waits for them), never overlap it.

        The lock is taken again for each import, after a pause in which a trial waiting to
        time its calls takes it first: that trial waits for one import at most, not for all
        of them (a trial with a cached artifact reaches its timed calls sooner than a kernel
        starts and imports everything). Imports not done when the kernel is taken are left to
        the notebook."""
        kc = None
        try:
            with timing.exclusive():
                kernel = self._spare = self._start()
                kc = kernel.client()
                kernel.wait_ready(kc)
            for module in PRELOAD:
                time.sleep(0.01)
                with timing.exclusive():
                    if self._taking.is_set():
                        break
                    kernel.preload(kc, module)
        except Exception:  # noqa: BLE001 - the next take() starts a kernel of its own
            spare, self._spare = self._spare, None
            if spare is not None:
                spare.shutdown()
                spare.log.unlink(missing_ok=True)
        finally:
            if kc is not None:
                kc.stop_channels()

    def _join(self) -> None:
        """Wait for the spare's boot, cutting its preloads short."""
        if self._booting is not None:
            self._taking.set()
            self._booting.join()
            self._taking.clear()
            self._booting = None

    def start_ahead(self) -> None:
        """Start booting the first notebook's kernel now (a Dask worker does, when it joins a
        sweep), rather than when the first notebook asks for it."""
        if self._booting is None and self._spare is None:
            self._booting = _thread(self._boot_spare, "workbench-kernel-ahead")

    def take(self, out_dir: Path) -> Kernel:
        """A kernel for the notebook going to ``out_dir``; the next one starts booting now."""
        self._join()
        kernel = self._spare or self._start()
        self._spare = None
        kernel.move_log(out_dir)
        if self.ahead:
            self._booting = _thread(self._boot_spare, "workbench-kernel-ahead")
        return kernel

    def release(self, kernel: Kernel) -> None:
        """Shut down the kernel of a notebook that has ended: killed and reaped now, cleaned
        up by jupyter_client in the background (about 10 ms of waiting per trial, off the
        sweep's path; :meth:`close` waits for it)."""
        try:
            kernel.kill()
        finally:
            thread = _thread(kernel.shutdown, "workbench-kernel-shutdown")
            self._closing = [t for t in self._closing if t.is_alive()] + [thread]

    def close(self) -> None:
        self._join()
        for thread in self._closing:
            thread.join()
        self._closing = []
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
    from jupyter_core.utils import ensure_async
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import run_hook, run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    if ENGINE in papermill_engines._engines:
        return

    class Client(PapermillNotebookClient):
        def __init__(self, nb_man, chdir: str | None = None, **kw):
            super().__init__(nb_man, **kw)
            self._chdir = chdir

        async def async_start_new_kernel_client(self):
            # nbclient's, without jupyter_client's wait_for_ready (0.2 s of IOPub silence per
            # trial): a kernel_info round trip whose IOPub status shows the subscription is live.
            kc = self.kc = self.km.client()
            await ensure_async(kc.start_channels())
            await self._handshake(kc)
            kc.allow_stdin = False
            await run_hook(self.on_notebook_start, notebook=self.nb)
            if self._chdir:
                msg_id = kc.execute(f"__import__('os').chdir({self._chdir!r})", silent=True,
                                    store_history=False)
                await self.async_wait_for_reply(msg_id)
            return kc

        start_new_kernel_client = run_sync(async_start_new_kernel_client)

        async def _handshake(self, kc) -> None:
            """Return once the kernel answered ``kernel_info`` on the shell channel and a status
            message of that request arrived on IOPub (a subscription made a moment ago may miss
            the first messages; then the request is repeated). Cells' outputs are matched to
            their request, so nothing else on IOPub needs to be drained."""
            deadline = time.monotonic() + self.startup_timeout
            sent: set[str] = set()
            while True:
                sent.add(kc.kernel_info())
                try:
                    reply = await kc.get_shell_msg(timeout=1.0)
                except queue.Empty:
                    reply = None
                if reply is not None and reply["parent_header"].get("msg_id") in sent:
                    try:
                        while True:
                            msg = await kc.get_iopub_msg(timeout=0.2)
                            if msg["parent_header"].get("msg_id") in sent:
                                return
                    except queue.Empty:
                        pass
                if not await ensure_async(self.km.is_alive()):
                    raise DeadKernelError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {self.startup_timeout} seconds")

        def execute(self, **kwargs):
            try:
                return super().execute(**kwargs)
            finally:  # the kernel is ours (not nbclient's), its client channels are not
                if self.kc is not None:
                    self.kc.stop_channels()

    class Manager(NotebookExecutionManager):
        """papermill's bookkeeping of a notebook run, saving the notebook when the run starts
        and ends (and during a cell longer than ``autosave_cell_every``) but not also before
        and after every cell."""
        quiet = False

        def save(self, **kwargs):
            if not self.quiet:
                super().save(**kwargs)

        def cell_start(self, *args, **kwargs):
            self.quiet = True
            try:
                super().cell_start(*args, **kwargs)
            finally:
                self.quiet = False

        def cell_complete(self, *args, **kwargs):
            self.quiet = True
            try:
                super().cell_complete(*args, **kwargs)
            finally:
                self.quiet = False

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True,
                             log_output=False, autosave_cell_every=30, **kwargs):
            # papermill's Engine.execute_notebook, with the Manager above
            nb_man = Manager(nb, output_path=output_path, progress_bar=progress_bar,
                             log_output=log_output, autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()  # saved, also after a timeout, a dead kernel, Ctrl-C
            return nb_man.nb

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
        if kernels:
            kernels.release(kernel)
        else:
            kernel.shutdown()
    if not metrics_path.exists():
        raise TrialFailed(f"notebook finished without writing {METRICS_FILE}", str(output))
    metrics = json.loads(metrics_path.read_text())
    metrics["notebook"] = str(output)
    metrics["notebook_seconds"] = time.perf_counter() - t0
    return metrics
