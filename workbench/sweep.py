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
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from workbench import fingerprint, notebook
from workbench.config import OBJECTIVES, Experiment, Range
from workbench.errors import ConfigError, TrialFailed, WorkbenchError
from workbench.params import to_builtin
from workbench.storage import (ask_lock, counts_towards_budget, heartbeat, open_storage,
                               recover_interrupted, worker_id)

DEFAULT_RUNS_DIR = "experiments/runs"
BASELINE_RUNTIMES = ("tensorflow", "onnxruntime")
# Parameters that only mean something when another one has a given value.
CONDITIONS = {
    "int8_mode": lambda p: p.get("bits") == 8,
    "calibration": lambda p: p.get("bits") == 8 and p.get("int8_mode") == "static",
    "per_channel": lambda p: p.get("bits") == 8,
    "prune_structure": lambda p: float(p.get("sparsity", 0)) > 0,
    "finetune_epochs": lambda p: float(p.get("sparsity", 0)) > 0,
    "provider": lambda p: p.get("runtime") in ("onnxruntime", "openvino"),
    "inter_op_threads": lambda p: p.get("runtime") == "onnxruntime",
    "graph_optimization": lambda p: p.get("runtime") == "onnxruntime",
    "execution_mode": lambda p: p.get("runtime") == "onnxruntime",
    "ov_hint": lambda p: p.get("runtime") == "openvino",
    "ov_streams": lambda p: p.get("runtime") == "openvino",
    # models (issue 14): distillation settings matter only when the trial distils
    "distill_temperature": lambda p: p.get("distill_width", 1.0) < 1.0,
    "distill_alpha": lambda p: p.get("distill_width", 1.0) < 1.0,
    "distill_epochs": lambda p: p.get("distill_width", 1.0) < 1.0,
}


def make_sampler(exp: Experiment, worker: int = 0):
    """The sampler of ``exp``; worker ``i`` of a parallel sweep gets seed ``seed + i`` so that
    workers do not propose the same sequence."""
    import optuna

    exp = exp.model_copy(update={"seed": exp.seed + worker})

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
            params[name] = to_builtin(trial.suggest_categorical(name, spec))
        else:
            params[name] = spec
    return params


def trial_settings(exp: Experiment) -> dict[str, Any]:
    """What every trial of the experiment shares: model, data, measurement protocol."""
    return dict(model=exp.resolve(exp.model), data=exp.resolve(exp.data),
                calibration_samples=exp.calibration_samples,
                max_accuracy_drop=exp.max_accuracy_drop, seed=exp.seed,
                task=exp.task, trust_model_code=exp.trust_model_code,
                output=exp.output,
                distill_student=exp.resolve(exp.distill_student) if exp.distill_student else None,
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


def storage_url(exp: Experiment, run_dir: Path, storage: str | None, workers: int = 1) -> str:
    """The study's storage: explicit, from the experiment, or a file in the run directory
    (SQLite for one process; a journal file for several workers, or when one exists)."""
    if storage or exp.storage:
        return storage or exp.storage
    journal, sqlite = run_dir / "study.journal", run_dir / "study.db"
    if workers > 1 and sqlite.exists():
        raise ConfigError(f"{run_dir}: this study is in SQLite (one process); for --workers give a "
                          "new --study, or --storage journal:PATH / postgresql://...")
    if journal.exists() or workers > 1:
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_study(exp: Experiment, study_name: str, url: str, worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[o] for o in exp.objectives]
    try:
        study = optuna.create_study(study_name=study_name, storage=open_storage(url),
                                    sampler=make_sampler(exp, worker), directions=directions,
                                    load_if_exists=True)
    except WorkbenchError:
        raise
    except ValueError as err:  # e.g. the stored study has other directions
        raise ConfigError(f"study {study_name!r} in {url}: {err}") from None
    except Exception as err:  # unreachable or malformed storage
        raise ConfigError(f"storage {url}: cannot open ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0]})") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {study_name!r} in {url} was created with other objectives")
    if study.user_attrs.get("experiment") != exp.name:
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


def run(exp: Experiment, *, n_trials: int | None = None, add: int | None = None,
        study_name: str | None = None, storage: str | None = None,
        runs_dir: str | Path = DEFAULT_RUNS_DIR, workers: int = 1, fresh: bool = False,
        progress: bool = True) -> Path:
    """Run (or continue) the sweep of ``exp`` and build its report; returns the run directory.

    ``n_trials`` is the total the study should reach, counting trials finished by earlier
    invocations (and other workers); ``add`` asks for that many more than it has now.
    ``workers`` > 1 starts that many worker processes sharing the study. ``fresh`` deletes the
    run directory's own study first (the quickstart notebook uses it to be re-runnable).
    """
    study_name = study_name or exp.name
    run_dir = Path(runs_dir).resolve() / exp.name / study_name
    if fresh and not (storage or exp.storage):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(exp, run_dir, storage, workers)
    study = open_study(exp, study_name, url)
    prepare_run_dir(exp, study_name, runs_dir, url)
    log = _logger(progress)
    run_baselines(exp, run_dir, log)
    target = _target(study, exp, n_trials, add)
    if workers > 1:
        _run_workers(exp, run_dir, study, study_name, url, target, workers, progress)
    else:
        work(exp, run_dir, study, url, target, progress=progress)
    from workbench import report

    report.build(run_dir)
    return run_dir


def _logger(progress: bool):
    from tqdm.auto import tqdm

    return (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda msg: None)


def _target(study, exp: Experiment, n_trials: int | None, add: int | None) -> int:
    if add is not None:
        return sum(counts_towards_budget(t) for t in study.get_trials(deepcopy=False)) + add
    target = n_trials or exp.n_trials
    if exp.sampler == "grid":
        target = min(target, len(grid_points(exp)))
    return target


def _run_workers(exp, run_dir: Path, study, study_name: str, url: str, target: int, workers: int,
                 progress: bool) -> None:
    """Start ``workers`` processes on the same study and follow their progress."""
    import subprocess
    import time

    from tqdm.auto import tqdm

    cmd = [sys.executable, "-m", "workbench.cli", "work", str(run_dir / "experiment.yaml"),
           "--study", study_name, "--storage", url, "--run-dir", str(run_dir),
           "--n-trials", str(target)]
    procs = [subprocess.Popen(cmd + ["--worker", str(i)]) for i in range(workers)]
    bar = tqdm(total=target, desc=f"sweep {exp.name} ({workers} workers)", unit="trial",
               disable=not progress, file=sys.stderr)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.n = min(target, _finished(study))
            bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        bar.close()
    failed = [p.returncode for p in procs if p.returncode not in (0, None)]
    if failed:
        raise WorkbenchError(f"{len(failed)} of {workers} workers stopped with an error "
                             f"(exit codes {failed}); completed trials are kept, run again to continue")


def _finished(study) -> int:
    return sum(counts_towards_budget(t) and t.state.name != "RUNNING"
               for t in study.get_trials(deepcopy=False))


def work(exp: Experiment, run_dir: Path, study, url: str, target: int, progress: bool = True) -> None:
    """One worker: ask, run the trial notebook, tell; until the study holds ``target`` trials.

    "Count, then ask" runs under a lock shared by all workers (file lock on one machine,
    PostgreSQL advisory lock across machines), so the study ends with exactly ``target``.
    """
    import optuna
    from tqdm.auto import tqdm

    log = _logger(progress)
    bar = tqdm(total=target, initial=min(_finished(study), target), desc=f"sweep {exp.name}",
               unit="trial", disable=not progress, file=sys.stderr)
    counts = {"complete": 0, "pruned": 0, "fail": 0}
    consecutive_failures = duplicates = 0
    while True:
        with ask_lock(url, run_dir, study.study_name):
            for number in recover_interrupted(study):
                log(f"trial {number} was interrupted (its worker is gone): marked FAIL, retried")
            if sum(counts_towards_budget(t) for t in study.get_trials(deepcopy=False)) >= target:
                break
            if exp.sampler == "grid" and not enqueue_next_grid_point(study, exp):
                break
            with warnings.catch_warnings():  # we beat the heartbeat ourselves (storage.heartbeat)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                trial = study.ask()
            trial.set_user_attr("worker", worker_id())
            params = {**trial_settings(exp), **suggest(trial, exp)}
            trial.set_user_attr("params", params)
            twin = _measured_twin(study, params, trial.number)
            if twin is not None:
                # Not measured twice: recorded as pruned, and not counted against n_trials.
                trial.set_user_attr("duplicate_of", twin)
                trial.set_user_attr("reason", f"same parameters as trial {twin} (not measured twice)")
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                duplicates += 1
                if duplicates >= 25:
                    log("search space exhausted: the sampler keeps proposing measured configurations")
                    break
                continue
        out_dir = run_dir / "trials" / str(trial.number)
        metrics, error = None, None
        with heartbeat(study, trial):
            try:
                metrics = notebook.execute(params, out_dir, timeout_s=exp.trial_timeout_s)
            except TrialFailed as err:
                error = err
                log(f"trial {trial.number} failed: {err.reason} (notebook: {err.notebook})")
        outcome = _tell(study, trial, exp, params, metrics, error)
        counts[outcome] += 1
        consecutive_failures = consecutive_failures + 1 if outcome == "fail" else 0
        bar.n = min(target, _finished(study))
        bar.set_postfix(complete=counts["complete"], pruned=counts["pruned"], failed=counts["fail"],
                        best=_best_so_far(study))
        if consecutive_failures >= exp.max_consecutive_failures:
            bar.close()
            from workbench import report

            report.build(run_dir)
            raise WorkbenchError(f"sweep stopped: {consecutive_failures} trials failed in a row "
                                 f"(max_consecutive_failures); last: {error.reason} "
                                 f"(notebook: {error.notebook})")
    bar.close()


def _measured_twin(study, params: dict, number: int) -> int | None:
    """An earlier trial measured (or being measured) with exactly ``params``, if any."""
    for t in study.get_trials(deepcopy=False):
        if (t.number != number and t.user_attrs.get("params") == params and counts_towards_budget(t)
                and t.state.name != "FAIL"):
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
