"""The study of an experiment: its sampler, its storage, its run directory.

A run directory is ``<runs_dir>/<experiment>/<study>/``; both names are validated (letters,
digits, ``_ . -``; not ``.`` or ``..``) so that a name can never point outside the runs
directory. The directory gets a marker file when the workbench creates it, and only a
directory with that marker is ever deleted (``fresh``).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from workbench import fingerprint
from workbench.config import OBJECTIVES, Experiment
from workbench.errors import ConfigError, WorkbenchError, first_line
from workbench.storage import open_storage, redact, redact_text

DEFAULT_RUNS_DIR = "experiments/runs"
MARKER = ".workbench-run"  # written into a run directory the workbench created
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe directory name, else a one-line error naming ``what``."""
    if not NAME.match(value or "") or value in (".", ".."):
        raise ConfigError(f"{what} {value!r}: use letters, digits, '_', '.', '-' (not '.' or '..')")
    return value


def run_dir_of(exp: Experiment, study_name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Where the study's outputs go (names checked, nothing created)."""
    return (Path(runs_dir).resolve() / check_name(exp.name, "experiment name")
            / check_name(study_name, "--study"))


def create_run_dir(run_dir: Path, fresh: bool = False) -> Path:
    """Create ``run_dir`` (with the workbench's marker); ``fresh`` first deletes it, but only
    if the workbench created it."""
    if fresh and run_dir.exists():
        if not (run_dir / MARKER).exists():
            raise WorkbenchError(f"fresh: {run_dir} was not created by the workbench (no {MARKER}); "
                                 "not deleting it")
        shutil.rmtree(run_dir)
    if not run_dir.exists():
        run_dir.mkdir(parents=True)
        (run_dir / MARKER).write_text("created by workbench; `fresh` may delete this directory\n")
    return run_dir


def make_sampler(exp: Experiment, worker: int = 0):
    """The sampler of ``exp``; worker ``i`` of a parallel sweep gets seed ``seed + i`` so that
    workers do not propose the same sequence."""
    import optuna

    exp = exp.model_copy(update={"seed": exp.seed + worker})

    if exp.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=exp.seed)
    if exp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=exp.seed)
    # "grid" enqueues every point of the grid (see space.grid_points) and samples nothing itself.
    # Optuna's GridSampler is not used: it ignores conditional parameters (so it would measure
    # the same configuration several times) and stops the study from inside tell().
    return optuna.samplers.RandomSampler(seed=exp.seed)


def storage_url(exp: Experiment, run_dir: Path, storage: str | None, workers: int = 1) -> str:
    """The study's storage: explicit (``--storage`` or ``WORKBENCH_STORAGE``), from the
    experiment, or a file in the run directory (SQLite for one process; a journal file for
    several workers, or when one exists)."""
    from workbench.storage import resolve_url

    storage = resolve_url(storage)
    if storage or exp.storage:
        return storage or exp.storage
    journal, sqlite = run_dir / "study.journal", run_dir / "study.db"
    if workers > 1 and sqlite.exists():
        raise ConfigError(f"{run_dir}: this study is in SQLite (one process); for --workers give a "
                          "new --study, or --storage journal:PATH / postgresql://...")
    if journal.exists() or workers > 1:
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_study(exp: Experiment, study_name: str, url: str, worker: int = 0):
    """Create or load the study; its directions must be the experiment's objectives."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[o] for o in exp.objectives]
    shown = redact(url)
    try:
        study = optuna.create_study(study_name=study_name, storage=open_storage(url),
                                    sampler=make_sampler(exp, worker), directions=directions,
                                    load_if_exists=True)
    except WorkbenchError:
        raise
    except ValueError as err:  # e.g. the stored study has other directions
        raise ConfigError(f"study {study_name!r} in {shown}: {redact_text(err, url)}") from None
    except Exception as err:  # unreachable or malformed storage
        first = redact_text(first_line(err), url)
        raise ConfigError(f"storage {shown}: cannot open ({type(err).__name__}: {first})") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {study_name!r} in {shown} was created with other objectives")
    if study.metric_names is None:  # the objectives by name, in Optuna's dashboard and tables
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(exp.objectives))
    if study.user_attrs.get("experiment") != exp.name:
        study.set_user_attr("experiment", exp.name)
        study.set_user_attr("objectives", exp.objectives)
    return study


def trial_settings(exp: Experiment) -> dict[str, Any]:
    """What every trial of the experiment shares: model, data, measurement protocol, and the
    scenario (the search space's conditions read it: serving options only apply to server)."""
    server = dict(slo_ms=exp.slo_ms, slo_percentile=exp.slo_percentile) if exp.scenario == "server" else {}
    return dict(model=exp.resolve(exp.model), data=exp.resolve(exp.data), scenario=exp.scenario, **server,
                calibration_samples=exp.calibration_samples,
                max_accuracy_drop=exp.max_accuracy_drop, seed=exp.seed,
                task=exp.task, trust_model_code=exp.trust_model_code,
                output=exp.output,  # models (issue 14)
                distill_student=exp.resolve(exp.distill_student) if exp.distill_student else None,
                **exp.measurement.model_dump())


def write_run_files(exp: Experiment, study_name: str, run_dir: Path, url: str) -> None:
    """experiment.yaml (model and data resolved), run.json (storage redacted), environment.json."""
    snapshot = exp.model_dump(mode="json")
    snapshot["model"], snapshot["data"] = exp.resolve(exp.model), exp.resolve(exp.data)
    if snapshot.get("storage"):
        snapshot["storage"] = redact(snapshot["storage"])
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(snapshot, sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps(
        {"experiment": exp.name, "study": study_name, "storage": redact(url),
         "objectives": exp.objectives, "max_accuracy_drop": exp.max_accuracy_drop}, indent=2))
    (run_dir / "environment.json").write_text(json.dumps(fingerprint.collect(), indent=2))
