"""The ``workbench`` command: ``sweep``, ``trial``, ``report``, ``export``, ``bench``, ``doctor``.

A user error prints one line (``error: ...``) and exits with code 2; no traceback. Anything
else is a bug: one line naming a log file that holds the traceback, exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from workbench.errors import WorkbenchError, first_line


def _sweep(args: argparse.Namespace) -> int:
    from workbench import config, report, sweep

    for flag, value, least in (("--n-trials", args.n_trials, 1), ("--add", args.add, 0),
                               ("--workers", args.workers, 1)):
        if value is not None and value < least:
            raise WorkbenchError(f"{flag}: must be at least {least} (got {value})")
    exp = config.load(args.config)
    run_dir = sweep.run(exp, n_trials=args.n_trials, add=args.add, study_name=args.study,
                        storage=args.storage, runs_dir=args.runs_dir, workers=args.workers,
                        progress=not args.quiet)
    _print_table(report, run_dir)
    return 0


def _work(args: argparse.Namespace) -> int:
    """One worker process of ``sweep --workers N`` (started by the sweep, not by users)."""
    from workbench import config, sweep

    exp = config.load(args.config)
    study = sweep.open_study(exp, args.study, args.storage, worker=args.worker)
    sweep.work(exp, Path(args.run_dir), study, args.storage, args.n_trials, progress=False)
    return 0


def _print_table(report, run_dir: Path) -> None:
    import pandas as pd

    full = report.load_table(run_dir)
    table = full[report.summary_columns(full)]
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.max_colwidth", 60, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = json.loads((run_dir / "best.json").read_text())
    if best.get("trial") is None:
        print(f"\nrecommended: none ({best.get('reason', 'no completed feasible trial')})")
    else:
        print(f"\nrecommended: trial {best['trial']} {best.get('label', '')}: {best['reason']}")
    print(f"run directory: {run_dir}")


def _trial(args: argparse.Namespace) -> int:
    from workbench import notebook, trial

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkbenchError(f"-p {item}: expected NAME=VALUE")
        params[key] = value
    if args.out:
        metrics = notebook.execute(params, args.out)
    else:
        metrics = trial.run(params)
    metrics.pop("latency_quantiles_ms", None)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _report(args: argparse.Namespace) -> int:
    from workbench import preflight, report

    preflight.check_run_dir(args.run_dir)
    paths = report.build(Path(args.run_dir), remeasure=not args.no_remeasure, progress=True)
    _print_table(report, Path(args.run_dir))
    for p in paths.values():
        print(p)
    return 0


def _export(args: argparse.Namespace) -> int:
    from workbench import bundle, preflight

    preflight.check_run_dir(args.run_dir, need_best=args.trial is None)
    out = bundle.export(Path(args.run_dir), trial=args.trial, out=args.out)
    print(f"bundle: {out}\nrun it: python {out / 'predict.py'} {out / 'sample_input.npy'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from workbench import remeasure

    r = remeasure.bench_onnx(args.model, batch_size=args.batch_size, threads=args.threads,
                             seconds=args.seconds, repeats=args.repeats)
    print(f"workbench p50 {r['workbench_p50_ms']:.5f} ms, bare loop p50 {r['bare_loop_p50_ms']:.5f} ms, "
          f"ratio {r['ratio']:.4f} (batch {r['batch_size']}, threads {r['threads']}, "
          f"{r['calls_each']} calls each in alternating blocks)")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from workbench import doctor

    report = doctor.collect()
    print(json.dumps(report, indent=2) if args.json else doctor.render(report))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("sweep", help="run or continue an Optuna sweep of trial notebooks")
    sp.add_argument("config", help="experiment YAML file")
    sp.add_argument("--n-trials", type=int, help="total number of trials the study should reach")
    sp.add_argument("--add", type=int, help="add this many trials to what the study has")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine sharing the study (journal storage)")
    sp.add_argument("--study", help="study name (default: the experiment name)")
    sp.add_argument("--storage", help="Optuna storage URL (default: sqlite in the run directory)")
    sp.add_argument("--runs-dir", default="experiments/runs", help="where run directories go")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_sweep)

    wp = sub.add_parser("work", help=argparse.SUPPRESS)
    wp.add_argument("config")
    wp.add_argument("--study", required=True)
    wp.add_argument("--storage", required=True)
    wp.add_argument("--run-dir", required=True)
    wp.add_argument("--n-trials", type=int, required=True)
    wp.add_argument("--worker", type=int, default=0)
    wp.set_defaults(func=_work)

    tp = sub.add_parser("trial", help="run one trial (in this process, or as a notebook with --out)")
    tp.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    tp.add_argument("--out", help="execute notebooks/trial.ipynb into this directory")
    tp.set_defaults(func=_trial)

    rp = sub.add_parser("report", help="write results.csv, report.md, report.html, plots, best.json")
    rp.add_argument("run_dir")
    rp.add_argument("--no-remeasure", action="store_true",
                    help="decide overlapping candidates without an interleaved re-measurement")
    rp.set_defaults(func=_report)

    ep = sub.add_parser("export", help="bundle a trial's artifact, config, metrics and predict.py")
    ep.add_argument("run_dir")
    ep.add_argument("--trial", help="trial number (default: the recommended one in best.json)")
    ep.add_argument("--out", help="bundle directory (default: RUN_DIR/export/trial-N)")
    ep.set_defaults(func=_export)

    bp = sub.add_parser("bench", help="p50 of the workbench's timing loop vs a bare loop (onnxruntime)")
    bp.add_argument("model", help="an .onnx file")
    bp.add_argument("--batch-size", type=int, default=1)
    bp.add_argument("--threads", type=int, default=1)
    bp.add_argument("--seconds", type=float, default=1.0, help="seconds per repeat")
    bp.add_argument("--repeats", type=int, default=5, help="total time is seconds x repeats")
    bp.set_defaults(func=_bench)

    dp = sub.add_parser("doctor", help="runtimes, providers, CPU features and GPUs of this machine")
    dp.add_argument("--json", action="store_true", help="machine-readable output")
    dp.set_defaults(func=_doctor)
    return ap


def one_line(err: BaseException) -> str:
    """The whole message of a user error on one line (its lines joined), never empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def _internal_error(err: BaseException) -> int:
    """A bug, not a user error: one line on stderr, the traceback in a log file, exit 1."""
    log_dir = Path(tempfile.gettempdir()) / "workbench-logs"
    text = "".join(traceback.format_exception(err))
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{id(err):x}.log"
        log.write_text(f"workbench {' '.join(sys.argv[1:])}\n\n{text}")
        where = str(log)
    except OSError:
        where = "unavailable: the log could not be written"
    what = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
    print(f"error: internal error: {what} (please report; details in {where})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2), already printed by argparse
        return done.code if isinstance(done.code, int) else 2
    try:
        return args.func(args)
    except WorkbenchError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept in the study; run the same command to continue",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: never a traceback on the terminal
        return _internal_error(err)


if __name__ == "__main__":
    sys.exit(main())
