"""Checks that run before any work starts, so a user's mistake costs one line, not a sweep.

:func:`check` loads the experiment's data and model once, in the sweep's own process, with the
very functions every trial uses (``data.load`` and ``zoo.resolve``: trust setting, formats,
input shape and dtype against the data, class labels against the outputs, task) and adds the
few checks those leave to the trials. A failure is a :class:`~workbench.errors.WorkbenchError`
raised before the run directory, the study, the baselines or any trial exist, so the CLI prints
one line and exits 2 instead of recording every trial as FAIL. A model that passes is now in
the artifact cache, so the trials do not load or build it again.

:func:`check_run_dir` does the same for ``workbench report`` / ``workbench export``: run.json
and the study storage are read without creating or changing anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from workbench.config import Experiment
from workbench.errors import DataError, ModelError, WorkbenchError, first_line

RUN_KEYS = ("experiment", "study", "storage", "objectives", "max_accuracy_drop")
SQLITE_MAGIC = b"SQLite format 3\x00"


def check(exp: Experiment) -> None:
    """Load ``exp``'s data and model as a trial would and check that they fit together."""
    with _native_stderr_held():
        _check(exp)


@contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Hold what is written to file descriptor 2 meanwhile: TensorFlow's C++ start-up lines
    (oneDNN, CUDA) ignore TF_CPP_MIN_LOG_LEVEL, and a refused model must be one line. A user
    error drops them; anything else (success, or a bug) writes them out as they were."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    user_error = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except WorkbenchError:
            user_error = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not user_error:
                held.seek(0)
                text = _without_framework_noise(held.read())
                if text:
                    os.write(2, text)


# TensorFlow's and absl's own log lines (native "I0000 12:00:00.000 123 file.cc:45] ..." and
# Python "WARNING:tensorflow:..."): start-up chatter that a newcomer reads as errors
# ("failed call to cuInit"). The sweep's terminal shows progress, the table and the answer.
_NOISE = re.compile(rb"^([IWEF]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\]|WARNING: All log messages before "
                    rb"absl|WARNING:(tensorflow|absl):|To enable the following instructions: )")


def _without_framework_noise(text: bytes) -> bytes:
    """``text`` without TensorFlow's and absl's log lines (kept in a log file instead)."""
    lines = text.splitlines(keepends=True)
    noise = [ln for ln in lines if _NOISE.match(ln)]
    if noise:
        log_dir = Path(tempfile.gettempdir()) / "workbench-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"preflight-{os.getpid()}.log", "ab") as fh:
            fh.writelines(noise)
    return b"".join(ln for ln in lines if not _NOISE.match(ln))


def _check(exp: Experiment) -> None:
    from workbench import data as data_mod
    from workbench import zoo

    data_spec, model_spec = exp.resolve(exp.data), exp.resolve(exp.model)
    data = data_mod.load(data_spec, exp.task)
    if model_spec in zoo.BUILTIN:
        if exp.task != "classification":
            raise ModelError(f"model {model_spec}: the builtin models are classifiers; task "
                             f"{exp.task} needs your own model file")
        if data.x_train is None or data.y_train is None:
            raise DataError(f"data {data_spec}: the builtin model {model_spec} is trained on the "
                            "data's x_train/y_train, which it lacks (add them, or give a trained "
                            "model file)")
    model = zoo.resolve(model_spec, data, exp.trust_model_code, exp.output)
    if exp.distill_student:  # models (issue 14): a student file must exist before any trial
        student = Path(exp.resolve(exp.distill_student))
        if not student.is_file() or student.suffix != ".keras":
            raise ModelError(f"distill_student: {student} is not a .keras file")
    if model.task != exp.task:
        raise ModelError(f"model {model.name}: prepared for task {model.task}, the experiment's "
                         f"task is {exp.task}")
    if exp.task == "regression":
        _check_regression_outputs(model, data)


def _check_regression_outputs(model, data) -> None:
    """One output value per target value, and finite: otherwise every trial's MAE is wrong or
    raises."""
    import numpy as np

    n = len(data.y_eval)
    outputs = model.reference().reshape(n, -1).shape[1]
    targets = np.asarray(data.y_eval).reshape(n, -1).shape[1]
    if outputs != targets:
        raise DataError(f"model {model.name} gives {outputs} values per sample but data "
                        f"{data.name} has {targets} target value(s) per sample (task regression)")
    if not np.all(np.isfinite(model.reference())):
        raise ModelError(f"model {model.name}: its outputs on data {data.name} are not all finite")


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
    from workbench.config import OBJECTIVES

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
    import optuna

    from workbench.storage import open_storage

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

