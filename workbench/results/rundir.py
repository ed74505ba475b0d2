"""A run directory: where it is, what marks it as the workbench's, and the files that describe it.

A run directory is ``<runs_dir>/<experiment>/<study>/``; both names are validated (letters,
digits, ``_ . -``; not ``.`` or ``..``) so that a name can never point outside the runs
directory. The directory gets a marker file when the workbench creates it, and only a
directory with that marker is ever deleted (``fresh``). ``run.json`` says how to reopen the
study (storage redacted), ``experiment.yaml`` is the experiment as run, ``environment.json`` the
machine. :func:`check_run_dir` reads them for ``workbench report`` / ``export`` without creating
or changing anything.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import optuna
import yaml

from workbench.config.experiment import Experiment
from workbench.core import fingerprint
from workbench.core.errors import ConfigError, WorkbenchError, first_line
from workbench.core.objectives import OBJECTIVES
from workbench.results.storage import open_storage, redact

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


def _snapshot(exp: Experiment) -> dict[str, Any]:
    """The experiment as ``experiment.yaml`` holds it: model and data resolved, storage redacted."""
    snapshot = exp.model_dump(mode="json")
    snapshot["model"], snapshot["data"] = exp.resolve(exp.model), exp.resolve(exp.data)
    if snapshot.get("storage"):
        snapshot["storage"] = redact(snapshot["storage"])
    return snapshot


# Fields a study may be continued with changed: how many trials, how long, where it is stored,
# which sampler proposes. Every other field changes what a trial measures or how it is judged.
CONTINUABLE = ("n_trials", "trial_timeout_s", "max_consecutive_failures", "storage", "sampler")


def changed_fields(exp: Experiment, run_dir: Path) -> list[str]:
    """The fields of ``exp`` that differ from the experiment ``run_dir`` was run with, as
    ``field old -> new`` (``search_space.bits [32, 8] -> [32, 8, 4]``); empty for a new run
    directory. Trials measured under other settings would be compared, told and decided as if
    they were this experiment's, so a changed experiment needs a new study."""
    path = run_dir / "experiment.yaml"
    if not path.is_file():
        return []
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WorkbenchError(f"{path}: damaged ({first_line(err)})") from None
    new = _snapshot(exp)
    out = []
    for key in dict.fromkeys([*old, *new]):
        if key in CONTINUABLE or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k} {a.get(k)} -> {b.get(k)}" for k in dict.fromkeys([*a, *b])
                    if a.get(k) != b.get(k)]
        else:
            out.append(f"{key} {a} -> {b}")
    return out


def write_run_files(exp: Experiment, study_name: str, run_dir: Path, url: str) -> None:
    """experiment.yaml (model and data resolved), run.json (storage redacted), environment.json."""
    snapshot = _snapshot(exp)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(snapshot, sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps(
        {"experiment": exp.name, "study": study_name, "storage": redact(url),
         "objectives": exp.objectives, "max_accuracy_drop": exp.max_accuracy_drop}, indent=2))
    (run_dir / "environment.json").write_text(json.dumps(fingerprint.collect(), indent=2))


def run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``, completed with the scenario settings of the run's ``experiment.yaml``."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise WorkbenchError(f"{run_dir}: not a run directory (no run.json)")
    info = json.loads(path.read_text())
    snap = Path(run_dir) / "experiment.yaml"
    if snap.exists():
        exp = yaml.safe_load(snap.read_text()) or {}
        for k in ("scenario", "latency_percentile", "latency_budget_ms", "task", "slo_ms", "slo_percentile"):
            if k in exp:
                info.setdefault(k, exp[k])
    info.setdefault("scenario", "single_stream")
    info.setdefault("latency_percentile", 90)
    return info


def latest_run_dir(runs_dir: str | Path) -> Path:
    """The most recently modified run directory under ``runs_dir``."""
    runs = sorted(Path(runs_dir).glob("*/*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise WorkbenchError(f"{runs_dir}: no run directories (run a sweep first)")
    return runs[-1].parent


RUN_KEYS = ("experiment", "study", "storage", "objectives", "max_accuracy_drop")


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_run_dir(run_dir: str | Path, need_best: bool = False) -> dict[str, Any]:
    """run.json of ``run_dir``, checked, with its study storage readable; nothing is written.

    ``need_best``: best.json must be present and readable too (``workbench export`` without
    ``--trial``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WorkbenchError(f"{run_dir}: no such run directory")
    info = read_json(run_dir / "run.json", "run.json", "not a run directory (no run.json)")
    if not isinstance(info, dict) or any(k not in info for k in RUN_KEYS):
        missing = [k for k in RUN_KEYS if not isinstance(info, dict) or k not in info]
        raise WorkbenchError(f"{run_dir / 'run.json'}: damaged (missing {', '.join(missing)})")
    bad = [k for k in ("experiment", "study", "storage") if not isinstance(info[k], str)]
    if (bad or not isinstance(info["objectives"], list) or not info["objectives"]
            or not _is_number(info["max_accuracy_drop"])):
        raise WorkbenchError(f"{run_dir / 'run.json'}: damaged (unexpected value of "
                             f"{(bad or ['objectives/max_accuracy_drop'])[0]})")
    unknown = [o for o in info["objectives"] if o not in OBJECTIVES]
    if unknown:
        raise WorkbenchError(f"{run_dir / 'run.json'}: damaged (unknown objective {unknown[0]!r})")
    _check_storage(run_dir, info["storage"], info["study"])
    if need_best:
        best = read_json(run_dir / "best.json", "best.json",
                         f"no best.json (run `workbench report {run_dir}` first, or pass --trial)")
        if not isinstance(best, dict):
            raise WorkbenchError(f"{run_dir / 'best.json'}: damaged (not a JSON object)")
    return info


def read_json(path: Path, what: str, missing: str) -> Any:
    """The parsed JSON file ``path``; missing, unreadable or invalid is one line."""
    if not path.is_file():
        raise WorkbenchError(f"{path.parent}: {missing}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise WorkbenchError(f"{path}: damaged, not valid JSON ({first_line(err)})") from None
    except OSError as err:
        raise WorkbenchError(f"{path}: cannot read {what} ({first_line(err)})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_storage(run_dir: Path, url: str, study: str) -> None:
    """The study exists in ``url``; a local file storage must exist and look like one (opening
    a missing SQLite file would create an empty database)."""
    path = None
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    elif url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
    if path is not None:
        if not path.is_file():
            raise WorkbenchError(f"{run_dir}: the study storage {path} is missing")
        if url.startswith("sqlite:///"):
            with open(path, "rb") as fh:
                if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise WorkbenchError(f"{path}: damaged, not an SQLite database")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
    except WorkbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - sqlite/journal/SQLAlchemy errors of every kind
        raise WorkbenchError(f"{run_dir}: cannot read the study storage {url} "
                             f"({type(err).__name__}: {first_line(err)})") from None
    if study not in names:
        raise WorkbenchError(f"{run_dir}: study {study!r} is not in {url} "
                             f"(it has {', '.join(names) or 'none'})")
