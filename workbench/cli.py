"""The ``workbench`` command: ``sweep``, ``trial``, ``report``, ``export``, ``bench``, ``doctor``.

A user error prints one line (``error: ...``) and exits with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.errors import WorkbenchError


def _sweep(args: argparse.Namespace) -> int:
    from workbench import config, report, sweep

    exp = config.load(args.config)
    if args.workers < 1:
        raise WorkbenchError(f"--workers: must be at least 1 (got {args.workers})")
    run_dir = sweep.run(exp, n_trials=args.n_trials, add=args.add, study_name=args.study,
                        storage=args.storage, runs_dir=args.runs_dir, workers=args.workers,
                        progress=not args.quiet)
    _print_table(report, run_dir)
    return 0


def _work(args: argparse.Namespace) -> int:
    """One worker process of ``sweep --workers N`` (started by the sweep, not by users)."""
    from workbench import config, sweep

    import signal

    from workbench.storage import ENV, resolve_url

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the kernels are shut down
    url = resolve_url(args.storage)  # the sweep passes it in the environment, not in argv
    if not url:
        raise WorkbenchError(f"work: no storage (--storage or {ENV})")
    exp = config.load(args.config)
    study = sweep.open_study(exp, args.study, url, worker=args.worker)
    sweep.work(exp, Path(args.run_dir), study, url, args.n_trials, progress=False)
    return 0


def _print_table(report, run_dir: Path) -> None:
    import pandas as pd

    full = report.load_table(run_dir)
    table = full[report.summary_columns(full)]
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.max_colwidth", 60, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = json.loads((run_dir / "best.json").read_text())
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
    from workbench import report

    paths = report.build(Path(args.run_dir), remeasure=not args.no_remeasure, progress=True)
    _print_table(report, Path(args.run_dir))
    for p in paths.values():
        print(p)
    return 0


def _export(args: argparse.Namespace) -> int:
    from workbench import bundle

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
    sp.add_argument("--storage", help="Optuna storage URL (default: $WORKBENCH_STORAGE, else sqlite in "
                                      "the run directory); prefer WORKBENCH_STORAGE for a password")
    sp.add_argument("--runs-dir", default="experiments/runs", help="where run directories go")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_sweep)

    wp = sub.add_parser("work", help=argparse.SUPPRESS)
    wp.add_argument("config")
    wp.add_argument("--study", required=True)
    wp.add_argument("--storage", help="default: $WORKBENCH_STORAGE")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept in the study; run the same command to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
