"""The sweep: run (or continue) an experiment's study, trial after trial, and build its report.

The study lives in an Optuna storage (SQLite in the run directory by default, or any URL such
as ``postgresql://``), so running the same command again continues it up to ``n_trials`` in
total. Trials use the ask-and-tell interface: the sampler proposes parameters
(:mod:`workbench.sweep.space`), the trial notebook measures them (:mod:`workbench.sweep.notebook`, each in
a fresh kernel started while the previous trial ran), the metrics are told back with the
accuracy-drop constraint (``trial.set_constraint``). A trial whose notebook fails is recorded
as FAIL with its notebook and error; the sweep goes on. ``workers`` > 1 runs that many worker
processes on the same study; they receive the storage URL through the environment
(``WORKBENCH_STORAGE``), never on their command line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from workbench import report, runtimes, variants
from workbench.config import Experiment
from workbench.core.errors import TrialFailed, WorkbenchError, first_line
from workbench.decision import best as best_mod
from workbench.measure import reuse
from workbench.results.rundir import DEFAULT_RUNS_DIR, create_run_dir, run_dir_of, write_run_files
from workbench.results.storage import (
    ENV,
    ask_lock,
    counts_towards_budget,
    heartbeat,
    recover_interrupted,
    resolve_url,
    worker_id,
)
from workbench.sweep import baselines, notebook, preflight, space
from workbench.sweep.space import enqueue_next_grid_point, grid_points, suggest
from workbench.sweep.study import check_unchanged, open_study, storage_url, trial_settings


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
        if metrics.get("stage") == "build":  # remembered for every trial of the same artifact
            trial.set_user_attr("build_failed", True)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    trial.set_user_attr("metrics", metrics)
    trial.set_constraint("accuracy_drop", metrics["accuracy_drop"] - exp.max_accuracy_drop)
    study.tell(trial, [float(metrics[o]) for o in exp.objectives])
    return "complete"


def run(exp: Experiment, *, n_trials: int | None = None, add: int | None = None,
        study_name: str | None = None, storage: str | None = None,
        runs_dir: str | Path = DEFAULT_RUNS_DIR, workers: int = 1, fresh: bool = False,
        progress: bool = True, launcher=None) -> Path:
    """Run (or continue) the sweep of ``exp`` and build its report; returns the run directory.

    ``n_trials`` is the total the study should reach, counting trials finished by earlier
    invocations (and other workers); ``add`` asks for that many more than it has now.
    ``workers`` > 1 starts that many worker processes sharing the study. ``storage`` (or
    ``WORKBENCH_STORAGE``) names the study's storage. ``fresh`` deletes the run directory first
    if the workbench created it (the quickstart notebook uses it to be re-runnable).
    ``launcher`` runs the baselines and trial notebooks elsewhere while this process keeps the
    study (:class:`workbench.sweep.dask.Launcher`: on a Dask cluster).
    """

    study_name = exp.name if study_name is None else study_name
    run_dir = run_dir_of(exp, study_name, runs_dir)  # names checked before anything is loaded
    preflight.check(exp)  # model + data loaded once and checked: nothing is created before this
    if launcher is not None:
        launcher.check(exp)  # its workers see the same code, model and data: still nothing created
    exp = space.resolve(exp)  # the automatic search space and default n_trials, when omitted
    create_run_dir(run_dir, fresh=fresh and not (resolve_url(storage) or exp.storage))
    url = storage_url(exp, run_dir, storage, workers)
    study = open_study(exp, study_name, url)
    check_unchanged(study, exp, run_dir)  # before run.json and experiment.yaml are rewritten
    write_run_files(exp, study_name, run_dir, url)
    log = _logger(progress)
    target = _target(study, exp, n_trials, add)
    space.enqueue_first_points(study, exp, target)
    if launcher is not None:  # the trials' kernels are the launcher's workers'
        with measured_in(run_dir):
            launcher.run(exp, run_dir, study, target, log, progress)
    else:
        with measured_in(run_dir), notebook.Kernels(run_dir / "trials") as kernels:
            baselines.run(exp, run_dir, log, kernels)
            if workers > 1:
                kernels.close()  # each worker process keeps its own kernel ahead
                _run_workers(exp, run_dir, study, study_name, url, target, workers, progress)
            else:
                work(exp, run_dir, study, url, target, progress=progress, kernels=kernels)

    best_mod.decide(run_dir, log=log)
    report.build(run_dir)
    return run_dir


@contextlib.contextmanager
def measured_in(run_dir: Path):
    """Trials reuse the measurements of this run (``reuse.REUSE_ENV``: an identical artifact
    with identical run options is measured once). Set before any kernel starts, since kernels
    inherit the environment, and restored after: a sweep run from a notebook or a test must
    not hand its measurements to whatever that process runs next."""
    before = os.environ.get(reuse.REUSE_ENV)
    os.environ[reuse.REUSE_ENV] = str(run_dir / "measured")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(reuse.REUSE_ENV, None)
        else:
            os.environ[reuse.REUSE_ENV] = before


def _logger(progress: bool):
    from tqdm.auto import tqdm

    return (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda msg: None)


def _target(study, exp: Experiment, n_trials: int | None, add: int | None) -> int:
    """The number of counted trials the study should reach: never more than the space's
    distinct configurations (a finite space), and one line on stderr says when that caps it."""
    counted = sum(counts_towards_budget(t) for t in study.get_trials(deepcopy=False))
    target = counted + add if add is not None else n_trials or exp.n_trials
    if space.finite(exp):
        distinct = len(grid_points(exp))
        if target > distinct:
            asked = (f"--add {add}" if add is not None else f"--n-trials {n_trials}" if n_trials
                     else f"n_trials: {exp.n_trials}")
            print(f"{asked}: the search space has {distinct} distinct configurations, the study "
                  f"{counted} trials; it stops at {max(distinct, counted)}", file=sys.stderr)
            target = max(distinct, counted)
    return target


def _run_workers(exp, run_dir: Path, study, study_name: str, url: str, target: int, workers: int,
                 progress: bool) -> None:
    """Start ``workers`` processes on the same study and follow their progress."""
    import subprocess
    import time

    from tqdm.auto import tqdm

    # The URL (it may hold a password) goes through the environment: a command line is
    # readable by every user of the machine (/proc/<pid>/cmdline, ps).
    cmd = [sys.executable, "-m", "workbench.cli", "work", str(run_dir / "experiment.yaml"),
           "--study", study_name, "--run-dir", str(run_dir), "--n-trials", str(target)]
    env = {**os.environ, ENV: url}
    procs = [subprocess.Popen(cmd + ["--worker", str(i)], env=env) for i in range(workers)]
    bar = tqdm(total=target, desc=f"sweep {exp.name} ({workers} workers)", unit="trial",
               disable=not progress, file=sys.stderr)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.n = min(target, _finished(study))
            bar.refresh()
    except BaseException:  # Ctrl-C or an error here: stop the workers (they stop their kernels)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
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


class Progress:
    """What a loop remembers between trials: outcomes so far, failures in a row, skipped
    duplicates, and whether the rest of a finite space is enumerated."""

    def __init__(self, exp: Experiment):
        self.counts = {"complete": 0, "pruned": 0, "fail": 0}
        self.consecutive_failures = 0
        self.duplicates = 0
        self.enumerate_rest = exp.sampler == "grid"  # a sampled finite space switches at its first repeat


def next_trial(study, exp: Experiment, target: int, state: Progress, log) -> tuple | None:
    """Ask the study for its next trial to run, ``(trial, params)``, or None once it holds
    ``target`` counted trials (or the space is exhausted). Interrupted trials are recovered
    first; a configuration already measured is told PRUNED here and the next one asked.
    The caller serialises this between askers (``ask_lock``) when there are several."""
    import optuna

    while True:
        for number in recover_interrupted(study):
            log(f"trial {number} was interrupted (its worker is gone): marked FAIL, retried")
        if sum(counts_towards_budget(t) for t in study.get_trials(deepcopy=False)) >= target:
            return None
        if state.enumerate_rest and not enqueue_next_grid_point(study, exp):
            log(f"every distinct configuration of the space ({len(grid_points(exp))}) has been tried")
            return None
        with warnings.catch_warnings():  # we beat the heartbeat ourselves (storage.heartbeat)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        try:
            params = {**trial_settings(exp), **suggest(trial, exp)}
        except Exception as err:  # never left RUNNING (it would count, then show as a bare FAIL)
            trial.set_user_attr("reason", f"parameters not sampled: {first_line(err)}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise WorkbenchError(f"trial {trial.number}: its parameters could not be sampled "
                                 f"({type(err).__name__}: {first_line(err)})") from None
        trial.set_user_attr("params", params)
        twin = _measured_twin(study, params, trial.number)
        if twin is None:
            return trial, params
        # Not run twice: recorded as pruned (TPE counts a pruned trial among the bad
        # ones, so the sampler learns a failed configuration too), not counted against n_trials.
        number, failed = twin
        trial.set_user_attr("duplicate_of", number)
        trial.set_user_attr("reason", failed or f"same parameters as trial {number} (not measured twice)")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        if space.finite(exp):  # the configurations not yet tried are enumerated instead
            state.enumerate_rest = True
            continue
        state.duplicates += 1
        if state.duplicates >= 25:
            log("search space exhausted: the sampler keeps proposing measured configurations")
            return None


def record_trial(study, trial, exp: Experiment, run_dir: Path, params: dict, metrics: dict | None,
                 error: TrialFailed | None, state: Progress, bar, log) -> None:
    """Tell the study how ``trial`` ended, remember its measurement for reuse, move the
    progress bar; after ``max_consecutive_failures`` failures in a row, decide and report on
    what was measured and stop with one line."""
    outcome = _tell(study, trial, exp, params, metrics, error)
    if metrics:
        reuse.record(run_dir, trial.number, metrics)
    state.counts[outcome] += 1
    state.consecutive_failures = state.consecutive_failures + 1 if outcome == "fail" else 0
    bar.n = min(bar.total, _finished(study))
    bar.set_postfix(complete=state.counts["complete"], pruned=state.counts["pruned"],
                    failed=state.counts["fail"], best=_best_so_far(study))
    if state.consecutive_failures >= exp.max_consecutive_failures:
        bar.close()
        best_mod.decide(run_dir, log=log)
        report.build(run_dir)
        raise WorkbenchError(f"sweep stopped: {state.consecutive_failures} trials failed in a row "
                             f"(max_consecutive_failures); last: {error.reason} "
                             f"(notebook: {error.notebook})")


def progress_bar(study, exp: Experiment, target: int, progress: bool, desc: str | None = None):
    from tqdm.auto import tqdm

    return tqdm(total=target, initial=min(_finished(study), target), desc=desc or f"sweep {exp.name}",
                unit="trial", disable=not progress, file=sys.stderr)


def work(exp: Experiment, run_dir: Path, study, url: str, target: int, progress: bool = True,
         kernels: notebook.Kernels | None = None) -> None:
    """One worker: ask, run the trial notebook, tell; until the study holds ``target`` trials.

    "Count, then ask" runs under a lock shared by all workers (file lock on one machine,
    PostgreSQL advisory lock across machines), so the study ends with exactly ``target``.
    ``kernels`` keeps the next trial's kernel booting; without it the worker keeps its own.
    """
    if kernels is None:
        with measured_in(run_dir), notebook.Kernels(run_dir / "trials") as kernels:
            return work(exp, run_dir, study, url, target, progress, kernels)
    log = _logger(progress)
    bar = progress_bar(study, exp, target, progress)
    state = Progress(exp)
    while True:
        with ask_lock(url, run_dir, study.study_name):
            asked = next_trial(study, exp, target, state, log)
        if asked is None:
            break
        trial, params = asked
        out_dir = run_dir / "trials" / str(trial.number)
        metrics, error = None, None
        with heartbeat(study, trial):
            try:
                metrics = notebook.execute(params, out_dir, timeout_s=exp.trial_timeout_s,
                                           kernels=kernels)
            except TrialFailed as err:
                error = err
                log(f"trial {trial.number} failed: {err.reason} (notebook: {err.notebook})")
        record_trial(study, trial, exp, run_dir, params, metrics, error, state, bar, log)
    bar.close()


def _measured_twin(study, params: dict, number: int) -> tuple[int, str | None] | None:
    """An earlier trial measured (or being measured) with exactly ``params``, or one that
    failed deterministically with them, or whose artifact (the same as ``params``') could not be
    built; with why it is not run again for the last two. A trial whose worker was interrupted
    has no ``error``: its parameters are retried, not remembered as failing."""
    for t in study.get_trials(deepcopy=False):
        if (t.number != number and t.user_attrs.get("build_failed") and "duplicate_of" not in t.user_attrs
                and _same_artifact(t.user_attrs.get("params") or {}, params)):
            return t.number, (f"same artifact as trial {t.number}, which could not be built "
                              f"({t.user_attrs.get('reason')}); not run again")
        if t.number == number or t.user_attrs.get("params") != params or "duplicate_of" in t.user_attrs:
            continue
        if t.state.name == "FAIL":
            if t.user_attrs.get("error") and not _transient(t.user_attrs["error"]):
                return t.number, f"same parameters as failed trial {t.number} ({t.user_attrs['error']}; not run again)"
        elif counts_towards_budget(t):
            return t.number, None
    return None


def _same_artifact(a: dict, b: dict) -> bool:
    """Would ``a`` and ``b`` build the same artifact: the same model and data, the same values of
    every transform's parameters, runtimes reading the same formats (threads and run options
    do not change the bytes)."""
    def formats(p):
        rt = runtimes.registered().get(p.get("runtime", ""))
        return rt.formats if rt else p.get("runtime")

    names = {q.name for t in variants.registered() for q in t.parameters}
    names |= {"model", "data", "calibration_samples", "max_accuracy_drop", "task", "output"}
    return formats(a) == formats(b) and all(a.get(n) == b.get(n) for n in names)


def _transient(error: str) -> bool:
    """A failure that may not happen again with the same parameters: a timeout (a busy
    machine) or a dead kernel (out of memory while another worker ran)."""
    return error.startswith("timed out") or error == "kernel died"


def _best_so_far(study) -> str:
    import optuna

    best = None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        m = t.user_attrs.get("metrics", {})
        if m.get("feasible") and (best is None or m["latency_p50_ms"] < best["latency_p50_ms"]):
            best = m
    return f"{best['label']} {best['latency_p50_ms']:.3f}ms" if best else "-"
