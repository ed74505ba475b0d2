"""Execute a trial notebook with papermill and read the metrics it leaves beside itself.

Every trial runs in a fresh kernel (so imports, threads and memory are those of a clean
deployment process) with its own directory as working directory. papermill changes the
process's working directory while it runs, so one process executes one notebook at a time;
parallel workers are separate processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from workbench.errors import TrialFailed

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TRIAL_NOTEBOOK = NOTEBOOKS / "trial.ipynb"
METRICS_FILE = "metrics.json"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def execute(params: Mapping[str, Any], out_dir: str | Path, *, timeout_s: float | None = None,
            notebook: str | Path | None = None) -> dict[str, Any]:
    """Run ``notebook`` with ``params`` into ``out_dir`` and return its ``metrics.json``.

    Raises :class:`TrialFailed` naming the executed notebook and the error's last line when the
    notebook raises, times out or its kernel dies. The executed notebook is always kept.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    # Kernels inherit this environment: keep TensorFlow's C++ start-up logging out of sweeps.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = notebook or TRIAL_NOTEBOOK  # looked up at call time, so tests can swap it
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / Path(notebook).name
    metrics_path = out_dir / METRICS_FILE
    metrics_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(output), parameters=dict(params, metrics_path=METRICS_FILE),
            kernel_name="python3", cwd=str(out_dir), progress_bar=False, log_output=False,
            execution_timeout=int(timeout_s) if timeout_s else None,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no start-up chatter per trial
        )
    except PapermillExecutionError as err:
        raise TrialFailed(f"{err.ename}: {_last_line(err.evalue)}", str(output)) from None
    except TimeoutError as err:  # nbclient's CellTimeoutError is a TimeoutError
        raise TrialFailed(f"timed out after {timeout_s:g} s", str(output)) from None
    except Exception as err:  # a dead kernel or any other papermill/nbclient error
        name = type(err).__name__
        reason = "kernel died" if "DeadKernel" in name else f"{name}: {_last_line(err)}"
        raise TrialFailed(reason, str(output)) from None
    if not metrics_path.exists():
        raise TrialFailed(f"notebook finished without writing {METRICS_FILE}", str(output))
    metrics = json.loads(metrics_path.read_text())
    metrics["notebook"] = str(output)
    metrics["notebook_seconds"] = time.perf_counter() - t0
    return metrics
