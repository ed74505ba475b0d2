"""The search space: the automatic one when an experiment gives none, and the resolved
experiment a sweep runs (``workbench plan`` prints it without running anything).

An automatic space holds what this model and this machine allow: every installed runtime that
can run the model's format, bits 32/16/8 (and 4, plus dynamic int8, only where MatMul weights
dominate: ``quantize.INT4_MIN_SHARE``), int8 static with and without per-channel scales,
threads 1..cores, channel pruning 0/0.25/0.5 for a Keras model whose data has a training split,
and the batch sizes of the scenario (single_stream: 1; offline: 1, 8, 32, 128). TensorFlow is
left out: it runs only the fp32 Keras model, which is already the baseline.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from workbench.config import Experiment, SearchSpace

# n_trials when the experiment gives none: every distinct configuration up to this many.
MAX_DEFAULT_TRIALS = 40
OFFLINE_BATCH_SIZES = [1, 8, 32, 128]
PRUNE_SPARSITIES = [0.0, 0.25, 0.5]
# Which runtimes read which source format (onnx: exported or given; tflite: via the Keras model).
_RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}


def installed_runtimes(model_format: str) -> list[str]:
    """Runtimes importable here that can run a model of ``model_format`` (keras or onnx)."""
    out = []
    for name, module in _RUNTIME_MODULES.items():
        if importlib.util.find_spec(module) is None:
            continue
        if name == "litert" and model_format == "onnx":  # the TFLite route needs the Keras model
            continue
        out.append(name)
    return out


def cores() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _model_facts(exp: Experiment) -> dict[str, Any]:
    """Format of the model, MatMul weight share of its fp32 ONNX, and whether data can train."""
    from workbench import data as data_mod
    from workbench import variants, zoo
    from workbench.variants import quantize

    data = data_mod.load(exp.resolve(exp.data), exp.task)
    model = zoo.resolve(exp.resolve(exp.model), data, exp.trust_model_code)
    facts = {"format": "onnx" if model.format == "onnx" else "keras", "share": 0.0,
             "trainable": data.x_train is not None}
    try:
        import onnx

        facts["share"] = quantize.matmul_weight_share(onnx.load(str(variants._onnx_fp32(model, data).path)))
    except Exception:  # noqa: BLE001 - without the share, int4 is simply not proposed
        pass
    return facts


def auto(exp: Experiment, facts: dict[str, Any] | None = None) -> SearchSpace:
    """The automatic search space of ``exp`` (see the module docstring)."""
    from workbench import decide
    from workbench.variants import quantize

    facts = facts or _model_facts(exp)
    sc = decide.scenario(exp.scenario)
    dense = facts["share"] >= quantize.INT4_MIN_SHARE
    space: dict[str, Any] = {
        "bits": [32, 16, 8, 4] if dense else [32, 16, 8],
        "int8_mode": ["static", "dynamic"] if dense else "static",
        "per_channel": [False, True],
        "runtime": installed_runtimes(facts["format"]) or "onnxruntime",
        "threads": list(range(1, cores() + 1)),
        "batch_size": OFFLINE_BATCH_SIZES if "batch_size" in sc.searched else 1,
    }
    if facts["format"] == "keras" and facts["trainable"]:
        space["sparsity"] = PRUNE_SPARSITIES
        space["prune_structure"] = "channels"
    space = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in space.items()}
    return SearchSpace(**space)


def default_n_trials(exp: Experiment) -> int:
    """Every distinct configuration when there are at most :data:`MAX_DEFAULT_TRIALS`, else that many."""
    return min(len(distinct(exp)), MAX_DEFAULT_TRIALS)


def distinct(exp: Experiment) -> list[dict[str, Any]]:
    """The distinct configurations of ``exp``'s space (conditional parameters respected)."""
    from workbench import sweep

    return sweep.grid_points(exp)


def resolve(exp: Experiment, facts: dict[str, Any] | None = None) -> Experiment:
    """``exp`` with its search space (automatic when omitted) and n_trials filled in."""
    if exp.auto_space:
        exp = exp.model_copy(update={"search_space": auto(exp, facts)})
        exp.__pydantic_fields_set__.add("search_space")
    if exp.n_trials is None:
        exp = exp.model_copy(update={"n_trials": default_n_trials(exp)})
    return exp


def plan(exp: Experiment) -> str:
    """What ``workbench plan`` prints: the question, the resolved space, the number of distinct
    configurations and the trials a sweep would run."""
    from workbench import decide
    from workbench.config import Range

    given = not exp.auto_space
    n_given = exp.n_trials
    exp = resolve(exp)
    info = {"scenario": exp.scenario, "latency_percentile": exp.latency_percentile,
            "latency_budget_ms": exp.latency_budget_ms, "max_accuracy_drop": exp.max_accuracy_drop,
            "task": exp.task}
    lines = [f"experiment {exp.name}: {decide.question(info)}",
             f"objectives: {', '.join(exp.objectives)}",
             f"search space ({'as given' if given else 'automatic: this model on this machine'}):"]
    for name, spec in exp.search_space:
        if isinstance(spec, Range):
            text = f"{spec.low}..{spec.high}" + (f" step {spec.step}" if spec.step else "")
        elif isinstance(spec, list):
            text = "[" + ", ".join(map(str, spec)) + "]"
        else:
            continue
        lines.append(f"  {name}: {text}")
    fixed = {k: v for k, v in exp.search_space.fixed().items()}
    lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    n = len(distinct(exp))
    lines.append(f"distinct configurations: {n}")
    lines.append(f"trials: {exp.n_trials} ({'as given' if n_given else 'default: all distinct, at most '}"
                 f"{'' if n_given else MAX_DEFAULT_TRIALS}), sampler {exp.sampler}")
    return "\n".join(lines)
