"""The study of an experiment: its sampler, its storage URL, and the settings every trial shares.

The run directory it lives in is ``workbench.results.rundir``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna

from workbench.config.experiment import Experiment
from workbench.core.errors import ConfigError, WorkbenchError, first_line
from workbench.core.objectives import OBJECTIVES
from workbench.results.rundir import changed_fields
from workbench.results.storage import open_storage, redact, redact_text, resolve_url
from workbench.sweep import space


def make_sampler(exp: Experiment, worker: int = 0):
    """The sampler of ``exp``; worker ``i`` of a parallel sweep gets seed ``seed + i`` so that
    workers do not propose the same sequence."""
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
    storage = resolve_url(storage)
    if storage or exp.storage:
        return storage or exp.storage
    journal, sqlite = run_dir / "study.journal", run_dir / "study.db"
    if workers > 1 and sqlite.exists():
        raise ConfigError(f"{run_dir}: this study is in SQLite, which one process writes; for "
                          "--workers start a new study (--study NAME: it gets a journal file), or "
                          "give --storage journal:PATH (a journal file) or postgresql://...")
    if journal.exists() or workers > 1:
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_study(exp: Experiment, study_name: str, url: str, worker: int = 0):
    """Create or load the study; its directions must be the experiment's objectives."""
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(exp.objectives))
    if study.user_attrs.get("experiment") != exp.name:
        study.set_user_attr("experiment", exp.name)
        study.set_user_attr("objectives", exp.objectives)
    return study


def check_unchanged(study, exp: Experiment, run_dir: Path) -> None:
    """Refuse to continue ``study`` with an experiment other than the one it was run with
    (``run_dir/experiment.yaml``, else the distributions its trials were sampled from): its
    trials would be judged by the new settings they were not measured with, and Optuna cannot
    sample changed choices in the same study. Called before anything of the run is written."""
    changes = changed_fields(exp, run_dir) or space.changed_distributions(study, exp)
    if changes:
        raise ConfigError(f"study {study.study_name!r} ({run_dir}) was run with another experiment: "
                          f"{'; '.join(changes)}; run the changed experiment as a new study "
                          "(--study NEW), or restore the old values to continue this one")


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
