"""One trial: build the variant, open it in its runtime, measure it. The one place a trial is defined.

``run(params)`` is what ``notebooks/trial.ipynb`` calls and what the tests call directly
(``scenario: server`` goes to :func:`workbench.trial.server.run_server_trial`, in the current
directory, which is the trial's under a sweep). It
returns a JSON-serialisable metrics dict whose ``status`` is ``complete`` or ``pruned`` (with
its ``reason``); anything else is an exception, which the sweep records as a failed trial.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from workbench import data as data_mod
from workbench import models, runtimes, variants
from workbench.config.params import TrialParams
from workbench.core import fingerprint
from workbench.core.errors import TrialPruned
from workbench.measure import reuse, timing
from workbench.measure.artifact import evaluate
from workbench.measure.artifact import size as artifact_size
from workbench.measure.timing import timing_batch
from workbench.trial.server import run_server_trial
from workbench.variants import onnx_export, quantize
from workbench.variants.prune import magnitude
from workbench.variants.prune import transform as prune


def _pruning_metrics(model: models.ModelRef, data, p: TrialParams) -> dict[str, Any]:
    """What pruning reached, measured on the exported fp32 artifact's weights (unstructured) or
    on the rebuilt model's parameter count (channels)."""
    pruned = prune.pruned(model, data, p)
    fp32 = onnx_export.onnx_fp32(pruned, data)
    return {
        "sparsity_reached": magnitude.onnx_sparsity(fp32.path),
        "param_count": pruned.meta["params"],
        "params_removed_fraction": 1.0 - pruned.meta["params"] / model.meta["params"],
    }


def _quantization_metrics(artifact) -> dict[str, Any]:
    """Which nodes int8 left in float and why (the accuracy-aware fallback), for the table."""
    rec = quantize.record(artifact.path)
    if rec is None:
        return {}
    groups: dict[str, list[dict]] = {}
    for f in rec["float_nodes"]:
        groups.setdefault(f["why"], []).append(f)
    text = []
    for why, nodes in groups.items():  # a few nodes by name, many by op type
        if len(nodes) <= 3:
            text += [f"{f['node']} ({f['op']}): {why}" for f in nodes]
        else:
            ops = {}
            for f in nodes:
                ops[f["op"]] = ops.get(f["op"], 0) + 1
            text.append(f"{len(nodes)} nodes ({', '.join(f'{o} x{c}' for o, c in ops.items())}): {why}")
    return {"quantization": rec, "float_nodes": "; ".join(text) or None}


def run(params: Mapping[str, Any] | TrialParams) -> dict[str, Any]:
    """Build, load and measure one deployment configuration."""
    t_start = time.perf_counter()
    p = params if isinstance(params, TrialParams) else TrialParams.parse(params)
    if p.scenario == "server":  # served under load; monitor.csv and server.log go beside metrics.json
        return run_server_trial(p, Path.cwd())
    out: dict[str, Any] = {"status": "complete", "label": p.describe(), "params": p.model_dump()}
    data = data_mod.load(p.data, p.task)
    model = models.resolve(p.model, data, p.trust_model_code, p.output)
    regression = p.task == "regression"
    if regression:  # quality is MAE/RMSE; "accuracy_drop" is the MAE increase over fp32
        out.update(baseline_mae=model.meta["mae"], baseline_rmse=model.meta["rmse"])
    else:
        out["baseline_accuracy"] = model.accuracy
    try:
        t0 = time.perf_counter()
        out["stage"] = "build"  # a pruned trial says whether its artifact could not be built
        artifact = variants.build(model, data, p, p.calibration_samples)
        out["stage"] = "run"
        out["build_seconds"] = time.perf_counter() - t0
        key = reuse.measurement_key(p.model_dump(), artifact.path)
        reused = reuse.reuse_metrics(key, out["params"], out["label"])
        if reused is not None:  # same artifact bytes, same run options: measured once
            return reused
        session = runtimes.load(p, artifact)
    except TrialPruned as err:
        out.update(status="pruned", reason=str(err), total_seconds=time.perf_counter() - t_start)
        return out

    try:
        outputs = evaluate(session, data.x_eval, p.batch_size)
        reference = model.reference()
        quality = models.quality(outputs, data)
        batch = timing_batch(data.x_eval, p.batch_size)
        with timing.exclusive():
            times = timing.time_calls(lambda: session.run(batch), p.warmup, p.min_runs,
                                       p.min_seconds, p.max_seconds)
        stats = timing.summarize(times, p.batch_size, seed=p.seed)
        providers, load_ms = list(session.providers), session.load_ms
    finally:
        session.close()

    size, size_gz = artifact_size(artifact.path)
    if p.sparsity > 0:
        out.update(_pruning_metrics(model, data, p))
    drop = quality["mae"] - model.meta["mae"] if regression else model.accuracy - quality["accuracy"]
    out.update(
        **quality,
        accuracy_drop=drop,
        feasible=bool(drop <= p.max_accuracy_drop + 1e-9),
        max_abs_diff=float(np.max(np.abs(outputs.astype(np.float32) - reference))),
        **stats,
        size_bytes=size,
        size_gzip_bytes=size_gz,
        load_ms=load_ms,
        peak_rss_mb=timing.peak_rss_mb(),
        providers=providers,
        artifact=str(artifact.path),
        artifact_format=artifact.format,
        transforms=list(artifact.transforms),
        **_quantization_metrics(artifact),
        fingerprint=fingerprint.collect(),
        total_seconds=time.perf_counter() - t_start,
    )
    if not regression:  # argmax agreement means nothing for a real-valued output
        out["top1_agreement"] = float(np.mean(outputs.argmax(-1) == reference.argmax(-1)) * 100.0)
    out["eval_samples"] = int(len(data.y_eval))
    out["measurement_key"] = key
    return out


def write_metrics(metrics: Mapping[str, Any], path: str | Path = "metrics.json") -> Path:
    """Write ``metrics`` atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(path)
    return path
