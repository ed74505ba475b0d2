"""Baselines: the unmodified Keras model in TensorFlow and its fp32 ONNX export in onnxruntime
(a model that exists only as ONNX has the one in onnxruntime: no row for a framework it lacks).

Measured once per run directory, through the same trial notebook and protocol as the trials,
so every trial's speed-up is against a number taken the same way on the same machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.config import Experiment, Range
from workbench.core.errors import TrialFailed
from workbench.models.builtin import BUILTIN
from workbench.models.user import detect
from workbench.sweep import notebook
from workbench.sweep.study import trial_settings

RUNTIMES = ("tensorflow", "onnxruntime")


def baseline_runtimes(exp: Experiment) -> tuple[str, ...]:
    """TensorFlow only for a model TensorFlow has (builtin, .keras, SavedModel)."""
    spec = exp.resolve(exp.model)
    fmt = "keras" if spec in BUILTIN else detect(Path(spec))
    return RUNTIMES if fmt != "onnx" else ("onnxruntime",)


def points(exp: Experiment) -> list[dict[str, Any]]:
    """Every batch size the sweep can pick (ranges: both ends), with the fewest threads."""
    batches = exp.search_space.batch_size
    batches = batches.values() if isinstance(batches, Range) else batches
    batches = sorted(set(batches if isinstance(batches, list) else [batches]))
    threads = exp.search_space.threads
    threads = min(threads.values() if isinstance(threads, Range) else
                  threads if isinstance(threads, list) else [threads])
    return [dict(runtime=rt, bits=32, sparsity=0.0, provider="CPUExecutionProvider",
                 batch_size=int(b), threads=int(threads))
            for rt in baseline_runtimes(exp) for b in batches]


def run(exp: Experiment, run_dir: Path, log=print, kernels: notebook.Kernels | None = None,
        execute=notebook.execute) -> list[dict[str, Any]]:
    """Measure the baselines not measured yet in ``run_dir`` (kept on resume); ``execute`` is
    :func:`notebook.execute` or a launcher's, with its signature (a Dask worker's notebook)."""
    results = []
    for point in points(exp):
        out = run_dir / "baselines" / f"{point['runtime']}-b{point['batch_size']}-t{point['threads']}"
        metrics_file = out / notebook.METRICS_FILE
        if metrics_file.exists():
            results.append(json.loads(metrics_file.read_text()))
            continue
        log(f"baseline {point['runtime']} fp32 batch {point['batch_size']} ...")
        try:
            results.append(execute({**trial_settings(exp), **point, **_in_process(exp)}, out,
                                            timeout_s=exp.trial_timeout_s, kernels=kernels))
        except TrialFailed as err:
            log(f"baseline {out.name} failed: {err.reason} (see {err.notebook})")
    return results


def _in_process(exp: Experiment) -> dict[str, Any]:
    """Baselines are always timed in-process. In a server sweep they stay the references for
    size and accuracy (the fp32 Keras model and its ONNX export, at batch 1); their latency is
    of one call, not of a served request, so no QPS or speed-up is derived from them."""
    return {"scenario": "single_stream"} if exp.scenario == "server" else {}
