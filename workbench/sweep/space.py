"""The search space: which parameters a trial gets, the grid, and the automatic space.

``CONDITIONS`` (derived from the runtime and variant registries, :mod:`workbench.config.parameters`)
says when a parameter means something (``int8_mode`` only at 8 bits, OpenVINO options only for
OpenVINO...): a parameter whose condition is false is neither sampled nor enumerated, so two
trials never differ only in a value that has no effect.

When an experiment gives no ``search_space``, :func:`auto` builds one from what this model and
this machine allow: every installed runtime that can run the model's format, bits 32/16/8 (and
4, plus dynamic int8, only where MatMul weights dominate: ``quantize.INT4_MIN_SHARE``; dynamic
int8 always for a model that exists only as ONNX), int8 static with and without per-channel
scales, int8 of all ops or of the compute ops only where the model's profile has both
(``quantize.mixed_ops``), threads 1..cores, channel pruning 0/0.25/0.5 for a
Keras model whose data has a training split, and the batch sizes of the scenario
(single_stream: 1; offline: 1, 8, 32, 128); for ``server`` a small serving space instead
(:func:`_server_space`). TensorFlow is left out: it runs only the fp32 Keras
model, which is already the baseline. ``workbench plan`` prints the resolved space
(:func:`plan`) without running anything.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from workbench import data as data_mod
from workbench import models, runtimes
from workbench.config import Experiment, Range, SearchSpace

# When a parameter means something, declared by the plug-in that reads it (workbench.config.parameters).
from workbench.config.parameters import CONDITIONS, serving
from workbench.config.params import to_builtin
from workbench.core import scenarios
from workbench.variants import onnx_export, quantize

# n_trials when the experiment gives none: every distinct configuration up to this many.
MAX_DEFAULT_TRIALS = 40
OFFLINE_BATCH_SIZES = [1, 8, 32, 128]
PRUNE_SPARSITIES = [0.0, 0.25, 0.5]


def grid_points(exp: Experiment) -> list[dict[str, Any]]:
    """Every distinct combination of the searched values, conditional parameters respected."""
    points: list[dict[str, Any]] = [{}]
    fixed = {**exp.search_space.fixed(), "scenario": exp.scenario}
    for name, spec in exp.search_space:
        if not isinstance(spec, (list, Range)):
            continue
        values = spec.values() if isinstance(spec, Range) else spec
        grown = []
        for point in points:
            context = {**fixed, **point}
            if name in CONDITIONS and not CONDITIONS[name](context):
                grown.append(point)
            else:
                grown.extend({**point, name: v} for v in values)
        points = grown
    return points


def finite(exp: Experiment) -> bool:
    """Whether :func:`grid_points` is the whole space (no float range: that is continuous)."""
    return all(spec.is_int for _, spec in exp.search_space if isinstance(spec, Range))


def enqueue_next_grid_point(study, exp: Experiment) -> bool:
    """Enqueue the first grid point no trial has taken yet; False when the grid is done."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state.name == "WAITING" for t in trials):
        return True  # a point already enqueued (e.g. an interrupted trial's, again) is asked first
    seen = [t.params or t.system_attrs.get("fixed_params", {}) for t in trials]
    for point in grid_points(exp):
        if point not in seen:
            study.enqueue_trial(point)
            return True
    return False


# What a search tries first (see first_points): the fast path the runtimes document, static
# QDQ int8 with per-channel scales of the compute ops and no pruning; preferences apply only
# where the space has them. The compute ops: where int8 buys its speed, and what keeps accuracy
# where other ops would lose it (a production classifier lost 88 points with every op in int8,
# none with MatMul/Conv only).
FAST_PATH = (("bits", 8), ("int8_mode", "static"), ("per_channel", True), ("quant_ops", "compute"),
             ("sparsity", 0.0))


def first_points(exp: Experiment, n_trials: int) -> list[dict[str, Any]]:
    """Configurations a sampled search measures before its sampler proposes anything.

    A sampler starts blind: TPE's first ten trials are random, so on a space of a few dozen
    configurations it finds the best no sooner than random sampling does (benchmarks/decision.md).
    What is known before measuring is where to look first: static int8 is the fast CPU path of
    every runtime here, and the thread count is the setting whose best value depends most on
    the model and the machine. So each runtime of the space is tried first at its fast path
    with the most threads (offline: at the largest batch size), in the order the space lists
    the runtimes, then each again with the fewest; at most a quarter of ``n_trials``, so a small
    budget keeps the most-threads points (all cores win for all but the smallest models). The
    grid sampler measures everything anyway and gets none. The sampler then learns from these
    trials like from any other.
    """
    if exp.sampler == "grid":
        return []

    points = grid_points(exp)
    spec = dict(exp.search_space)
    runtimes = spec.get("runtime") if isinstance(spec.get("runtime"), list) else [None]
    threads = sorted({p["threads"] for p in points if "threads" in p}) or [None]
    out: list[dict[str, Any]] = []
    for t in dict.fromkeys([threads[-1], threads[0]]):
        for rt in runtimes:
            cands = [p for p in points if p.get("runtime", rt) == rt and p.get("threads", t) == t]
            for name, value in FAST_PATH:
                narrowed = [p for p in cands if p.get(name, value) == value]
                cands = narrowed or cands
            if "batch_size" in spec and any("batch_size" in p for p in cands):
                pick = max if "batch_size" in scenarios.scenario(exp.scenario).searched else min
                best = pick(p.get("batch_size", 1) for p in cands)
                cands = [p for p in cands if p.get("batch_size", 1) == best]
            if cands and cands[0] not in out:
                out.append(cands[0])
    return out[:n_trials // 4]


def enqueue_first_points(study, exp: Experiment, n_trials: int) -> list[dict[str, Any]]:
    """Enqueue :func:`first_points` in a study that has no trial yet (a resumed or shared
    study already has them, or its own history); returns what was enqueued."""
    if study.get_trials(deepcopy=False):
        return []
    points = first_points(exp, n_trials)
    for point in points:
        study.enqueue_trial(point)
    return points


def suggest(trial, exp: Experiment) -> dict[str, Any]:
    """Trial parameters: searched ones from the sampler, fixed ones as written, all builtins."""
    params: dict[str, Any] = {}
    for name, spec in exp.search_space:
        # the scenario is a trial setting, not searched, but conditions read it (serving options)
        if name in CONDITIONS and not CONDITIONS[name]({"scenario": exp.scenario, **params}):
            continue
        if isinstance(spec, Range):
            if spec.is_int:
                params[name] = int(trial.suggest_int(name, int(spec.low), int(spec.high),
                                                     step=int(spec.step or 1), log=spec.log))
            else:
                params[name] = float(trial.suggest_float(name, spec.low, spec.high,
                                                         step=spec.step, log=spec.log))
        elif isinstance(spec, list):
            params[name] = to_builtin(trial.suggest_categorical(name, spec))
        else:
            params[name] = spec
    return params


def distributions(exp: Experiment) -> dict[str, Any]:
    """The Optuna distribution of every searched parameter of ``exp``, as :func:`suggest` asks it."""
    import optuna

    out: dict[str, Any] = {}
    for name, spec in exp.search_space:
        if isinstance(spec, Range) and spec.is_int:
            out[name] = optuna.distributions.IntDistribution(int(spec.low), int(spec.high),
                                                             step=int(spec.step or 1), log=spec.log)
        elif isinstance(spec, Range):
            out[name] = optuna.distributions.FloatDistribution(spec.low, spec.high, step=spec.step,
                                                               log=spec.log)
        elif isinstance(spec, list):
            out[name] = optuna.distributions.CategoricalDistribution(spec)
    return out


def changed_distributions(study, exp: Experiment) -> list[str]:
    """Searched parameters whose values differ from those the study's trials were sampled
    from (``search_space.bits [32, 8] -> [32, 8, 4]``): Optuna cannot sample them in this study."""
    import optuna

    new, out = distributions(exp), {}
    for t in study.get_trials(deepcopy=False):
        for name, old in t.distributions.items():
            if name in new and name not in out and old != new[name]:
                try:
                    optuna.distributions.check_distribution_compatibility(old, new[name])
                except ValueError:
                    out[name] = f"search_space.{name} {_values(old)} -> {_values(new[name])}"
    return list(out.values())


def _values(dist) -> str:
    if hasattr(dist, "choices"):
        return str(list(dist.choices))
    return f"{dist.low}..{dist.high}"


def installed_runtimes(model_format: str) -> list[str]:
    """Registered runtimes whose packages are installed here and that can run a model of
    ``model_format`` (keras: exported to ONNX or converted to TFLite; onnx: as it is)."""
    reachable = {"onnx"} if model_format == "onnx" else {"onnx", "tflite"}
    out = []
    for name, rt in runtimes.registered().items():
        if not reachable & set(rt.formats):
            continue
        if all(importlib.util.find_spec(pkg.replace("-", "_"))
               for pkg in rt.packages):
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
    data = data_mod.load(exp.resolve(exp.data), exp.task)
    model = models.resolve(exp.resolve(exp.model), data, exp.trust_model_code)
    facts = {"format": "onnx" if model.format == "onnx" else "keras", "share": 0.0,
             "trainable": data.x_train is not None, "mixed_ops": False}
    try:
        import onnx

        graph = onnx.load(str(onnx_export.onnx_fp32(model, data).path))
        facts["share"] = quantize.matmul_weight_share(graph)
        facts["mixed_ops"] = quantize.mixed_ops(graph)
    except Exception:  # noqa: BLE001 - without the profile, int4 and quant_ops are simply not proposed
        pass
    return facts


def auto(exp: Experiment, facts: dict[str, Any] | None = None) -> SearchSpace:
    """The automatic search space of ``exp`` (see the module docstring)."""
    facts = facts or _model_facts(exp)
    sc = scenarios.scenario(exp.scenario)
    dense = facts["share"] >= quantize.INT4_MIN_SHARE
    space: dict[str, Any] = {
        "bits": [32, 16, 8, 4] if dense else [32, 16, 8],
        # dynamic int8 needs no calibration data: worth a trial on a model trained elsewhere
        "int8_mode": ["static", "dynamic"] if dense or facts["format"] == "onnx" else "static",
        "per_channel": [False, True],
        "runtime": installed_runtimes(facts["format"]) or "onnxruntime",
        "threads": list(range(1, cores() + 1)),
        "batch_size": OFFLINE_BATCH_SIZES if "batch_size" in sc.searched else 1,
    }
    if facts.get("mixed_ops"):  # compute ops among others: int8 of all, or of the compute ops only
        space["quant_ops"] = ["all", "compute"]
    if facts["format"] == "keras" and facts["trainable"]:
        space["sparsity"] = PRUNE_SPARSITIES
        space["prune_structure"] = "channels"
    if sc.name == "server":
        space.update(_server_space(space))
    space = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in space.items()}
    return SearchSpace(**space)


def _server_space(space: dict[str, Any]) -> dict[str, Any]:
    """The automatic space of ``scenario: server``, kept small (each trial serves and ramps a
    load for many seconds): fp32 and static int8 in every installed runtime, one thread, the
    builtin engine, batching off (max_batch_size 1) or on (8, with no or a 2 ms delay, waiting
    for the delay or not): 5 serving configurations per variant, at most 30 in all."""
    return {"bits": [32, 8], "int8_mode": "static", "per_channel": False, "quant_ops": "all", "sparsity": 0.0,
            "threads": 1, "batch_size": 1, "serving_engine": "builtin", "max_batch_size": [1, 8],
            "max_queue_delay_ms": [0.0, 2.0], "batch_policy": ["idle", "delay"], "instances": 1}


def default_n_trials(exp: Experiment) -> int:
    """Every distinct configuration when there are at most :data:`MAX_DEFAULT_TRIALS`, else that many."""
    return min(len(distinct(exp)), MAX_DEFAULT_TRIALS)


def distinct(exp: Experiment) -> list[dict[str, Any]]:
    """The distinct configurations of ``exp``'s space (conditional parameters respected)."""
    return grid_points(exp)


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
    given = not exp.auto_space
    n_given = exp.n_trials
    exp = resolve(exp)
    info = {"scenario": exp.scenario, "latency_percentile": exp.latency_percentile,
            "latency_budget_ms": exp.latency_budget_ms, "max_accuracy_drop": exp.max_accuracy_drop,
            "task": exp.task, "slo_ms": exp.slo_ms, "slo_percentile": exp.slo_percentile}
    lines = [f"experiment {exp.name}: {scenarios.question(info)}",
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

    # the serving options are shown only where they apply (scenario server)
    context = {**exp.search_space.fixed(), "scenario": exp.scenario}
    hidden = {p.name for p in serving() if not p.applies(context)}
    fixed = {k: v for k, v in exp.search_space.fixed().items() if k not in hidden}
    lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    n = len(distinct(exp))
    lines.append(f"distinct configurations: {n}")
    lines.append(f"trials: {exp.n_trials} ({'as given' if n_given else 'default: all distinct, at most '}"
                 f"{'' if n_given else MAX_DEFAULT_TRIALS}), sampler {exp.sampler}")
    first = first_points(exp, exp.n_trials)
    if first:
        lines.append(f"first {len(first)} trials (the fast paths, before the sampler): "
                     + "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in first))
    return "\n".join(lines)
