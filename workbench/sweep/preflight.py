"""Checks that run before any work starts, so a user's mistake costs one line, not a sweep.

:func:`check` loads the experiment's data and model once, in the sweep's own process, with the
very functions every trial uses (``data.load`` and ``models.resolve``: trust setting, formats,
input shape and dtype against the data, class labels against the outputs, task) and adds the
few checks those leave to the trials. A failure is a :class:`~workbench.core.errors.WorkbenchError`
raised before the run directory, the study, the baselines or any trial exist, so the CLI prints
one line and exits 2 instead of recording every trial as FAIL. A model that passes is now in
the artifact cache, so the trials do not load or build it again.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from workbench import data as data_mod
from workbench import models
from workbench.config.experiment import Experiment
from workbench.core.errors import DataError, ModelError, WorkbenchError


def check(exp: Experiment) -> None:
    """Load ``exp``'s data and model as a trial would and check that they fit together."""
    with native_stderr_held():
        _check(exp)


@contextmanager
def native_stderr_held() -> Iterator[None]:
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
    data_spec, model_spec = exp.resolve(exp.data), exp.resolve(exp.model)
    data = data_mod.load(data_spec, exp.task)
    if model_spec in models.BUILTIN:
        if exp.task != "classification":
            raise ModelError(f"model {model_spec}: the builtin models are classifiers; task "
                             f"{exp.task} needs your own model file")
        if data.x_train is None or data.y_train is None:
            raise DataError(f"data {data_spec}: the builtin model {model_spec} is trained on the "
                            "data's x_train/y_train, which it lacks (add them, or give a trained "
                            "model file)")
    model = models.resolve(model_spec, data, exp.trust_model_code, exp.output)
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
    n = len(data.y_eval)
    outputs = model.reference().reshape(n, -1).shape[1]
    targets = np.asarray(data.y_eval).reshape(n, -1).shape[1]
    if outputs != targets:
        raise DataError(f"model {model.name} gives {outputs} values per sample but data "
                        f"{data.name} has {targets} target value(s) per sample (task regression)")
    if not np.all(np.isfinite(model.reference())):
        raise ModelError(f"model {model.name}: its outputs on data {data.name} are not all finite")
