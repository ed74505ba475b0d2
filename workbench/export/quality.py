"""The quality a bundle promises: measured by the workbench on the bundled sample, through its own
session of the trial's runtime with the trial's options, for ``predict.py --check`` to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from workbench import runtimes, variants
from workbench.config.params import TrialParams
from workbench.core.errors import TrialPruned, WorkbenchError
from workbench.measure.artifact import evaluate


class ExportError(WorkbenchError):
    """A trial cannot be exported: missing, not completed, its artifact gone, or --out is not a
    place export may write to."""


def expected_quality(out: Path, params: dict[str, Any], artifact: Path, fmt: str) -> dict[str, float]:
    """The quality workbench measures on the bundled sample, through its own session of the
    trial's runtime with the trial's options. In a fresh process, as a trial runs: a runtime may
    only take its thread settings before its first use in a process (TensorFlow)."""
    code = ("import json, sys; from workbench.export import quality; "
            "print(json.dumps(quality.measure_quality(*json.loads(sys.argv[1]))))")
    check = next(out.glob("check_inputs.np[yz]"))
    args = json.dumps([params, str(artifact), fmt, str(check), str(out / "check_targets.npy")])
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")})
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"cannot open the trial's artifact {artifact} to check the bundle: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_quality(params: dict[str, Any], artifact: str, fmt: str, x_path: str,
                    y_path: str) -> dict[str, float]:
    """Quality of ``artifact`` (format ``fmt``) opened as ``params`` say, on the arrays at
    ``x_path``/``y_path``."""
    p = TrialParams.parse(params)
    art = variants.Artifact(Path(artifact), fmt, "", ())
    try:
        session = runtimes.load(p, art)
    except TrialPruned as err:
        raise ExportError(f"the runtime refuses the trial's own options: {err}") from None
    try:
        if x_path.endswith(".npz"):
            with np.load(x_path) as z:
                x = {k: z[k] for k in z.files}
        else:
            x = np.load(x_path)
        outputs = evaluate(session, x, p.batch_size)
        y = np.load(y_path)
    finally:
        session.close()
    if p.task == "regression":
        err = outputs.astype(np.float64).reshape(len(y), -1) - y.astype(np.float64).reshape(len(y), -1)
        return {"mae": float(np.mean(np.abs(err)))}
    return {"accuracy": float(np.mean(np.argmax(outputs, axis=-1) == y) * 100.0)}
