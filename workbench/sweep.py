"""Optuna study over deployment configurations, one papermill notebook per trial.

The study lives in an Optuna storage (SQLite in the run directory by default, or any URL such
as ``postgresql://``), so running the same command again continues it up to ``n_trials`` in
total. Trials use the ask-and-tell interface: the sampler proposes parameters, the notebook
measures them, the metrics are told back with the accuracy-drop constraint
(``trial.set_constraint``). A trial whose notebook fails is recorded as FAIL with its notebook
and error; the sweep goes on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from workbench import fingerprint, notebook
from workbench.config import OBJECTIVES, Experiment, Range
from workbench.errors import ConfigError, TrialFailed, WorkbenchError

DEFAULT_RUNS_DIR = "experiments/runs"
BASELINE_RUNTIMES = ("tensorflow", "onnxruntime")
# Parameters that only mean something when another one has a given value.
CONDITIONS = {
    "int8_mode": lambda p: p.get("bits") == 8,
    "calibration": lambda p: p.get("bits") == 8 and p.get("int8_mode") == "static",
    "per_channel": lambda p: p.get("bits") == 8,
    "prune_structure": lambda p: float(p.get("sparsity", 0)) > 0,
}


def make_sampler(exp: Experiment):
    import optuna

    if exp.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=exp.seed)
    if exp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=exp.seed)
    # "grid" enqueues every point of the grid (see grid_points) and samples nothing itself.
    # Optuna's GridSampler is not used: it ignores conditional parameters (so it would measure
    # the same configuration several times) and stops the study from inside tell().
    return optuna.samplers.RandomSampler(seed=exp.seed)


def grid_points(exp: Experiment) -> list[dict[str, Any]]:
    """Every distinct combination of the searched values, conditional parameters respected."""
    points: list[dict[str, Any]] = [{}]
    fixed = exp.search_space.fixed()
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


def enqueue_next_grid_point(study, exp: Experiment) -> bool:
    """Enqueue the first grid point no trial has taken yet; False when the grid is done."""
    seen = [t.params or t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]
    for point in grid_points(exp):
        if point not in seen:
            study.enqueue_trial(point)
            return True
    return False


def suggest(trial, exp: Experiment) -> dict[str, Any]:
    """Trial parameters: searched ones from the sampler, fixed ones as written, all builtins."""
    params: dict[str, Any] = {}
    for name, spec in exp.search_space:
        if name in CONDITIONS and not CONDITIONS[name](params):
            continue
        if isinstance(spec, Range):
            if spec.is_int:
                params[name] = int(trial.suggest_int(name, int(spec.low), int(spec.high),
                                                     step=int(spec.step or 1), log=spec.log))
            else:
                params[name] = float(trial.suggest_float(name, spec.low, spec.high,
                                                         step=spec.step, log=spec.log))
        elif isinstance(spec, list):
            params[name] = _builtin(trial.suggest_categorical(name, spec))
        else:
            params[name] = spec
    return params


def _builtin(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def trial_settings(exp: Experiment) -> dict[str, Any]:
    """What every trial of the experiment shares: model, data, measurement protocol."""
    return dict(model=exp.resolve(exp.model), data=exp.resolve(exp.data),
                calibration_samples=exp.calibration_samples,
                max_accuracy_drop=exp.max_accuracy_drop, seed=exp.seed,
                **exp.measurement.model_dump())


def baseline_points(exp: Experiment) -> list[dict[str, Any]]:
    """Baselines: the Keras model in TensorFlow and its fp32 ONNX export in onnxruntime, at
    every batch size the sweep can pick (ranges: both ends), with the fewest threads."""
    batches = exp.search_space.batch_size
    batches = batches.values() if isinstance(batches, Range) else batches
    batches = sorted(set(batches if isinstance(batches, list) else [batches]))
    threads = exp.search_space.threads
    threads = min(threads.values() if isinstance(threads, Range) else
                  threads if isinstance(threads, list) else [threads])
    return [dict(runtime=rt, bits=32, sparsity=0.0, provider="CPUExecutionProvider",
                 batch_size=int(b), threads=int(threads))
            for rt in BASELINE_RUNTIMES for b in batches]


def run_baselines(exp: Experiment, run_dir: Path, log=print) -> list[dict[str, Any]]:
    """Measure the baselines once per run directory (kept on resume)."""
    results = []
    for point in baseline_points(exp):
        out = run_dir / "baselines" / f"{point['runtime']}-b{point['batch_size']}-t{point['threads']}"
        metrics_file = out / notebook.METRICS_FILE
        if metrics_file.exists():
            results.append(json.loads(metrics_file.read_text()))
            continue
        log(f"baseline {point['runtime']} fp32 batch {point['batch_size']} ...")
        try:
            results.append(notebook.execute({**trial_settings(exp), **point}, out,
                                            timeout_s=exp.trial_timeout_s))
        except TrialFailed as err:
            log(f"baseline {out.name} failed: {err.reason} (see {err.notebook})")
    return results


def storage_url(exp: Experiment, run_dir: Path, storage: str | None) -> str:
    return storage or exp.storage or f"sqlite:///{run_dir / 'study.db'}"


def open_study(exp: Experiment, study_name: str, url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[o] for o in exp.objectives]
    try:
        study = optuna.create_study(study_name=study_name, storage=url, sampler=make_sampler(exp),
                                    directions=directions, load_if_exists=True)
    except ValueError as err:  # e.g. the stored study has other directions
        raise ConfigError(f"study {study_name!r} in {url}: {err}") from None
    except Exception as err:  # unreachable or malformed storage URL
        raise ConfigError(f"storage {url}: cannot open ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0]})") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {study_name!r} in {url} was created with other objectives")
    study.set_user_attr("experiment", exp.name)
    study.set_user_attr("objectives", exp.objectives)
    return study


def prepare_run_dir(exp: Experiment, study_name: str, runs_dir: str | Path, url: str) -> Path:
    run_dir = Path(runs_dir).resolve() / exp.name / study_name
    run_dir.mkdir(parents=True, exist_ok=True)
    snapshot = exp.model_dump(mode="json")
    snapshot["model"], snapshot["data"] = exp.resolve(exp.model), exp.resolve(exp.data)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(snapshot, sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps(
        {"experiment": exp.name, "study": study_name, "storage": url,
         "objectives": exp.objectives, "max_accuracy_drop": exp.max_accuracy_drop}, indent=2))
    (run_dir / "environment.json").write_text(json.dumps(fingerprint.collect(), indent=2))
    return run_dir


def _tell(study, trial, exp: Experiment, params: dict, metrics: dict | None, error: TrialFailed | None):
    import optuna

    trial.set_user_attr("params", params)
    if error is not None:
        trial.set_user_attr("error", error.reason)
        trial.set_user_attr("notebook", error.notebook)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "fail"
    trial.set_user_attr("notebook", metrics.get("notebook"))
    if metrics["status"] == "pruned":
        trial.set_user_attr("reason", metrics["reason"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    trial.set_user_attr("metrics", metrics)
    trial.set_constraint("accuracy_drop", metrics["accuracy_drop"] - exp.max_accuracy_drop)
    study.tell(trial, [float(metrics[o]) for o in exp.objectives])
    return "complete"


def run(exp: Experiment, *, n_trials: int | None = None, study_name: str | None = None,
        storage: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR, fresh: bool = False,
        progress: bool = True) -> Path:
    """Run (or continue) the sweep of ``exp`` and build its report; returns the run directory.

    ``n_trials`` is the total the study should reach, counting trials finished by earlier
    invocations. ``fresh`` deletes an existing SQLite study of the same run directory first
    (the quickstart notebook uses it to be re-runnable).
    """
    import optuna
    from tqdm.auto import tqdm

    from workbench import report

    study_name = study_name or exp.name
    run_dir = Path(runs_dir).resolve() / exp.name / study_name
    if fresh and not (storage or exp.storage):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    url = storage_url(exp, run_dir, storage)
    run_dir = prepare_run_dir(exp, study_name, runs_dir, url)
    study = open_study(exp, study_name, url)
    log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda msg: None)

    run_baselines(exp, run_dir, log)
    target = n_trials or exp.n_trials
    if exp.sampler == "grid":
        target = min(target, len(grid_points(exp)))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.FAIL)
    counts = {"complete": 0, "pruned": 0, "fail": 0}
    done = len(study.get_trials(deepcopy=False, states=finished))
    bar = tqdm(total=target, initial=min(done, target), desc=f"sweep {exp.name}", unit="trial",
               disable=not progress, file=sys.stderr)
    consecutive_failures = duplicates = 0
    while done < target:
        if exp.sampler == "grid" and not enqueue_next_grid_point(study, exp):
            break
        trial = study.ask()
        params = {**trial_settings(exp), **suggest(trial, exp)}
        twin = _measured_twin(study, params)
        if twin is not None:
            # Not measured twice: recorded as pruned, and not counted against n_trials.
            trial.set_user_attr("params", params)
            trial.set_user_attr("reason", f"same parameters as trial {twin} (not measured twice)")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            target += 1
            duplicates += 1
            done = len(study.get_trials(deepcopy=False, states=finished))
            if duplicates >= 25:
                log("search space exhausted: the sampler keeps proposing measured configurations")
                break
            continue
        out_dir = run_dir / "trials" / str(trial.number)
        metrics, error = None, None
        try:
            metrics = notebook.execute(params, out_dir, timeout_s=exp.trial_timeout_s)
        except TrialFailed as err:
            error = err
            log(f"trial {trial.number} failed: {err.reason} (notebook: {err.notebook})")
        outcome = _tell(study, trial, exp, params, metrics, error)
        counts[outcome] += 1
        consecutive_failures = consecutive_failures + 1 if outcome == "fail" else 0
        done = len(study.get_trials(deepcopy=False, states=finished))
        bar.update(1)
        bar.set_postfix(complete=counts["complete"], pruned=counts["pruned"], failed=counts["fail"],
                        best=_best_so_far(study))
        if consecutive_failures >= exp.max_consecutive_failures:
            bar.close()
            report.build(run_dir)
            raise WorkbenchError(f"sweep stopped: {consecutive_failures} trials failed in a row "
                                 f"(max_consecutive_failures); see {out_dir / 'trial.ipynb'}")
    bar.close()
    report.build(run_dir)
    return run_dir


def _measured_twin(study, params: dict) -> int | None:
    """The number of an earlier trial measured with exactly ``params``, if any."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED)):
        if t.user_attrs.get("params") == params and "same parameters" not in t.user_attrs.get("reason", ""):
            return t.number
    return None


def _best_so_far(study) -> str:
    import optuna

    best = None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        m = t.user_attrs.get("metrics", {})
        if m.get("feasible") and (best is None or m["latency_p50_ms"] < best["latency_p50_ms"]):
            best = m
    return f"{best['label']} {best['latency_p50_ms']:.3f}ms" if best else "-"
