"""Identical work is measured once: a trial whose artifact bytes and run options were measured
before in this run reuses that measurement (``reused_from``).

The sweep points ``WORKBENCH_MEASURED_DIR`` at the run's ``measured/`` folder (kernels inherit
it); ``trial.run`` looks its key up before timing, the sweep records each measured trial after
telling it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from workbench.core.cache import file_hash

REUSE_ENV = "WORKBENCH_MEASURED_DIR"

# Parameters that change how an artifact is run (everything else changes the artifact itself,
# which the content hash covers, or only the bookkeeping).
RUN_OPTIONS = ("runtime", "provider", "threads", "inter_op_threads", "graph_optimization",
               "execution_mode", "ov_hint", "ov_streams", "batch_size", "task", "data",
               "warmup", "min_runs", "min_seconds", "max_seconds", "max_accuracy_drop")

def measurement_key(params: dict[str, Any], artifact_path: str | Path) -> str:
    """Same artifact bytes + same run options = the same measurement."""
    opts = {k: params.get(k) for k in RUN_OPTIONS}
    blob = json.dumps([file_hash(Path(artifact_path)), opts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]

def reusable(key: str, directory: str | Path | None = None) -> dict[str, Any] | None:
    """The metrics recorded under ``key`` in this run's measured directory, if any."""
    directory = directory or os.environ.get(REUSE_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{key}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

def record(run_dir: str | Path, trial_number: int, metrics: dict[str, Any]) -> None:
    """Remember a measured trial under its measurement key (called by the sweep after tell)."""
    key = metrics.get("measurement_key")
    if not key or metrics.get("reused_from") is not None or metrics.get("status") != "complete":
        return
    d = Path(run_dir) / "measured"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{key}.json"
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"trial": trial_number, "metrics": metrics}))
    tmp.replace(path)

def reuse_metrics(key: str, params_dump: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Metrics for a trial whose measurement key was measured before, marked ``reused_from``."""
    hit = reusable(key)
    if not hit:
        return None
    m = dict(hit["metrics"])
    for k in ("notebook", "notebook_seconds"):
        m.pop(k, None)
    m.update(params=params_dump, label=label, reused_from=hit["trial"], measurement_key=key)
    return m
