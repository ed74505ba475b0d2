"""``workbench export RUN_DIR``: the recommended (or a chosen) trial of a run, as a bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench import data as data_mod
from workbench import variants
from workbench.config.params import TrialParams
from workbench.core.errors import WorkbenchError
from workbench.export.bundle import check_out, write_bundle
from workbench.export.quality import ExportError
from workbench.results.best import BEST_FILE
from workbench.results.rundir import run_info
from workbench.results.table import trial_metrics
from workbench.variants import Artifact


def export(run_dir: str | Path, trial: str | int | None = None, out: str | Path | None = None) -> Path:
    """Write the bundle of ``trial`` (default: the recommended one in ``best.json``); returns its directory."""
    run_dir = Path(run_dir)
    if trial is None:
        best_path = run_dir / BEST_FILE
        if not best_path.exists():
            raise ExportError(f"{run_dir}: no best.json (run `workbench report {run_dir}` first, or pass --trial)")
        trial = json.loads(best_path.read_text()).get("trial")
        if trial is None:
            raise ExportError(f"{run_dir}: best.json recommends no trial (pass --trial)")
    out = Path(out) if out else run_dir / "export" / f"trial-{trial}".replace(":", "-")
    check_out(out)  # before any work: a refused --out costs nothing
    try:
        metrics = trial_metrics(run_dir, str(trial))
    except WorkbenchError as err:
        raise ExportError(str(err)) from None
    info = run_info(run_dir)
    return export_trial(metrics, out, title=dict(trial=trial, experiment=info["experiment"], study=info["study"]))


def export_trial(metrics: dict[str, Any], out: Path, title: dict[str, Any] | None = None) -> Path:
    """The bundle of a completed trial's ``metrics`` (as ``trial.run`` returns them) in ``out``."""
    p = TrialParams.parse(metrics["params"])
    path = Path(metrics.get("artifact") or "")
    if metrics.get("artifact") and path.exists():
        fmt = metrics.get("artifact_format") or ("savedmodel" if path.is_dir() else path.suffix.lstrip("."))
        artifact, data = Artifact(path, fmt, "", ()), data_mod.load(p.data, p.task)
    else:  # its cache entry was removed or is on another machine: rebuilt from the parameters
        data, _, artifact = variants.artifact_for(p)
    return write_bundle(out, p, artifact, data, metrics=metrics, title=title)
