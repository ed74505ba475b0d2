"""The ``workbench`` command: find, measure and ship the best way to deploy a trained model.

Subcommands: ``sweep``, ``k8s``, ``plan``, ``trial``, ``report``, ``export``, ``image``, ``serve``,
``load``, ``bench``, ``doctor``.

A user error prints one line (``error: ...``) and exits with code 2; no traceback. Anything
else is a bug: one line naming a log file that holds the traceback, exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from workbench.core.errors import WorkbenchError, first_line


def _sweep(args: argparse.Namespace) -> int:
    from workbench import config, sweep

    for flag, value, least in (("--n-trials", args.n_trials, 1), ("--add", args.add, 0),
                               ("--workers", args.workers, 1)):
        if value is not None and value < least:
            raise WorkbenchError(f"{flag}: must be at least {least} (got {value})")
    launcher = contextlib.nullcontext()
    if args.dask is not None:
        from workbench.sweep import dask

        if args.workers > 1:
            raise WorkbenchError("--workers and --dask: choose one (with --dask the cluster's workers run the trials)")
        dask.check_address(args.dask)  # before anything is loaded or started
    exp = config.load(args.config)
    if args.dask is not None:
        launcher = dask.Launcher(args.dask)  # connected, workers' code checked: still nothing written
    with launcher:
        run_dir = sweep.run(exp, n_trials=args.n_trials, add=args.add, study_name=args.study,
                            storage=args.storage, runs_dir=args.runs_dir, workers=args.workers,
                            progress=not args.quiet, launcher=launcher if args.dask else None)
    _print_table(run_dir)
    return 0


def _work(args: argparse.Namespace) -> int:
    """One worker process of ``sweep --workers N`` (started by the sweep, not by users)."""
    import signal

    from workbench import config, sweep
    from workbench.results.storage import ENV, resolve_url
    from workbench.sweep.study import open_study

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the kernels are shut down
    url = resolve_url(args.storage)  # the sweep passes it in the environment, not in argv
    if not url:
        raise WorkbenchError(f"work: no storage (--storage or {ENV})")
    exp = config.load(args.config)
    study = open_study(exp, args.study, url, worker=args.worker)
    sweep.work(exp, Path(args.run_dir), study, url, args.n_trials, progress=False)
    return 0


def _k8s(args: argparse.Namespace) -> int:
    from workbench import config
    from workbench.sweep import k8s

    opts = {k: getattr(args, k) for k in ("workers", "name", "namespace", "secret", "secret_key", "pvc",
                                          "image", "cpu", "memory", "mount")}
    k8s.check_options(**opts, config=args.config)
    exp = config.load(args.config)
    k8s.check_experiment(exp, Path(args.config), args.mount)
    print(k8s.manifest(exp, Path(args.config), **opts), end="")
    return 0


def _print_table(run_dir: Path) -> None:
    import pandas as pd

    from workbench.results.table import load_table, summary_columns

    full = load_table(run_dir)
    table = full[summary_columns(full)]
    table = table.apply(lambda c: c.fillna("") if c.dtype == object else c)  # no "None" cells
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.max_colwidth", 60, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = json.loads((run_dir / "best.json").read_text())
    if best.get("question"):
        print(f"\nquestion: {best['question']}")
    if best.get("trial") is None:
        print(f"recommended: none ({best.get('reason', 'no completed feasible trial')})")
    else:
        print(f"recommended: trial {best['trial']} {best.get('label', '')}: {best['reason']}")
        print(f"deploy it: workbench export {run_dir} --out bundle")
    print(f"run directory: {run_dir}")


def _trial(args: argparse.Namespace) -> int:
    from workbench import trial
    from workbench.sweep import notebook

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
    from workbench.decision.best import decide
    from workbench.results.rundir import check_run_dir

    check_run_dir(args.run_dir)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    decide(Path(args.run_dir), remeasure=not args.no_remeasure, log=log)
    paths = report.build(Path(args.run_dir))
    _print_table(Path(args.run_dir))
    for p in paths.values():
        print(p)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from workbench import config
    from workbench.sweep import space

    print(space.plan(config.load(args.config)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from workbench.export.run import export
    from workbench.results.rundir import check_run_dir

    if args.engine not in ("builtin", "kserve"):
        raise WorkbenchError(f"--engine: builtin or kserve (got {args.engine})")
    check_run_dir(args.run_dir, need_best=args.trial is None)
    out = export(Path(args.run_dir), trial=args.trial, out=args.out)
    sample = next(out.glob("sample_input.np[yz]"), out / "sample_input.npy")
    print(f"bundle: {out}\nrun it: python {out / 'predict.py'} {sample}"
          f"\nre-measure it: python {out / 'predict.py'} --check")
    if args.engine == "kserve":
        from workbench.serve.kserve import write_inferenceservice

        print(f"KServe InferenceService: {write_inferenceservice(out, name=f'trial-{out.name}')}")
    print(f"serve it: workbench serve {out}" + (" --engine kserve" if args.engine == "kserve" else ""))
    return 0


def _image(args: argparse.Namespace) -> int:
    from workbench.export.image import build
    from workbench.serve.kserve import manifest_path, write_inferenceservice

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    manifest_path(args.bundle)  # a file of that name the workbench did not write: refused before the build
    built = build(args.bundle, args.tag, log=log)
    print(f"image: {built['tag']} ({built['id']}, {built['size_bytes'] / 1e6:.0f} MB, built in {built['seconds']:g} s)"
          f"\nrun it: CONTAINERS_CONF={built['containers_conf']} podman run --rm --network=host -e HOST=127.0.0.1 "
          f"-e PORT=8080 {built['tag']}  (also GRPC_PORT; arguments after the image go to `workbench serve`)"
          f"\nKServe InferenceService: "
          f"{write_inferenceservice(args.bundle, name=Path(args.bundle).resolve().name, image=built['tag'])}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from workbench.measure.bench import bench_onnx

    r = bench_onnx(args.model, batch_size=args.batch_size, threads=args.threads,
                             seconds=args.seconds, repeats=args.repeats)
    print(f"workbench p50 {r['workbench_p50_ms']:.5f} ms, bare loop p50 {r['bare_loop_p50_ms']:.5f} ms, "
          f"ratio {r['ratio']:.4f} (batch {r['batch_size']}, threads {r['threads']}, "
          f"{r['calls_each']} calls each in alternating blocks)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from workbench import serve
    from workbench.export.bundle import open_bundle
    from workbench.serve import guard
    from workbench.serve.batcher import POLICIES

    for flag, value, low in (("--max-batch-size", args.max_batch_size, 1), ("--max-queue", args.max_queue, 1),
                             ("--instances", args.instances, 1), ("--threads", args.threads, 1),
                             ("--grpc-port", args.grpc_port, 1),
                             ("--max-queue-delay-ms", args.max_queue_delay_ms, 0)):
        if value is not None and value < low:
            raise WorkbenchError(f"{flag}: must be at least {low} (got {value})")
    if args.batch_policy is not None and args.batch_policy not in POLICIES:
        raise WorkbenchError(f"--batch-policy: one of {', '.join(POLICIES)} (got {args.batch_policy})")
    guard.auth_token(args.auth_token_env)  # unset or empty: one line, before anything starts
    measured = open_bundle(args.bundle).serving()  # a bad bundle is one line here, not in the server's log
    for key, value in measured.items():  # batching as measured, unless given
        if getattr(args, key) is None:
            setattr(args, key, value)
    opts = serve.ServeOptions(name=args.name, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                              max_queue_delay_ms=args.max_queue_delay_ms, batch_policy=args.batch_policy,
                              max_queue=args.max_queue, instances=args.instances, threads=args.threads,
                              trust_model_code=args.trust_model_code, grpc_port=args.grpc_port,
                              auth_token_env=args.auth_token_env)
    eng = serve.engine(args.engine, args.bundle, opts)
    if not guard.loopback(args.host):
        print(f"warning: --host {args.host} exposes the endpoint beyond this machine, in plain HTTP"
              + ("" if args.auth_token_env else " and without --auth-token-env")
              + ": put it behind an authenticating TLS proxy (README, Serving)", file=sys.stderr, flush=True)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        eng.start(log=args.log, watch_parent=True)
        eng.wait_ready(args.ready_timeout)
        print(f"serving {args.bundle} as {opts.name!r} ({args.engine}) at {eng.url}\n"
              f"infer: POST {eng.infer_url}\nmetrics: {eng.url}/metrics\n"
              + (f"grpc: inference.GRPCInferenceService at {eng.grpc_target}\n" if opts.grpc_port is not None else "")
              + f"batching: max batch {opts.max_batch_size}, policy {opts.batch_policy}"
              + (f" (delay {opts.max_queue_delay_ms:g} ms)" if opts.batch_policy == "delay" else "")
              + f", {opts.instances} instance(s)", flush=True)
        while eng.proc.poll() is None:
            time.sleep(0.5)
        if eng.proc.returncode in (0, -signal.SIGTERM):
            return 0
        print(f"error: the {args.engine} server exited with code {eng.proc.returncode}"
              + (f" (its output: {args.log})" if args.log else " (--log FILE keeps its output)"),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping: draining in-flight requests", file=sys.stderr, flush=True)
        return 0
    finally:
        eng.stop()


def _load(args: argparse.Namespace) -> int:
    from workbench.serve import load

    result = load.run(args.url, rate=args.rate, duration=args.duration, concurrency=args.concurrency,
                      requests=args.requests, data=args.data, seed=args.seed, binary=args.binary)
    print(json.dumps(result, indent=2) if args.json else load.render(result))
    if not result["valid"]:  # on stderr too, so a --json consumer's log says why
        print("workbench load: INVALID run - " + "; ".join(result["invalid_reasons"]), file=sys.stderr)
    return 0 if result["valid"] else 1


def _doctor(args: argparse.Namespace) -> int:
    from workbench.runtimes import doctor
    from workbench.sweep.preflight import native_stderr_held

    with native_stderr_held():  # TensorFlow's start-up lines ("failed call to cuInit") are noise here
        report = doctor.collect()
    print(json.dumps(report, indent=2) if args.json else doctor.render(report))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    # metavar: the hidden ``work`` command stays out of the list (argparse shows "==SUPPRESS==")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ap.commands = sub.choices

    sp = sub.add_parser("sweep", help="run or continue an Optuna sweep of trial notebooks")
    sp.add_argument("config", help="experiment YAML file")
    sp.add_argument("--n-trials", type=int, help="total number of trials the study should reach")
    sp.add_argument("--add", type=int, help="add this many trials to what the study has")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine sharing the study (journal storage)")
    sp.add_argument("--dask", metavar="ADDRESS",
                    help="run the trial notebooks on a Dask cluster: tcp://HOST:PORT of a running "
                         "scheduler, or local:N (N worker processes on 127.0.0.1)")
    sp.add_argument("--study", help="study name (default: the experiment name)")
    sp.add_argument("--storage", help="Optuna storage URL (default: $WORKBENCH_STORAGE, else sqlite in "
                                      "the run directory); prefer WORKBENCH_STORAGE for a password")
    sp.add_argument("--runs-dir", default="experiments/runs", help="where run directories go")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_sweep)

    kp = sub.add_parser("k8s", help="print a Kubernetes manifest that runs the sweep on Dask (scheduler, "
                                    "workers, driver Job); kubectl apply -f it")
    kp.add_argument("config", help="experiment YAML file (goes into a ConfigMap)")
    kp.add_argument("--workers", type=int, required=True, help="Dask worker pods, one per node")
    kp.add_argument("--image", required=True, help="an image with the workbench installed (its .venv on PATH: "
                                                    "dask and workbench), the same for every pod")
    kp.add_argument("--pvc", required=True, help="a ReadWriteMany PersistentVolumeClaim: file models and "
                                                 "data, and the run directory (MOUNT/runs)")
    kp.add_argument("--mount", default="/shared", help="where the claim is mounted in every pod")
    kp.add_argument("--secret", default="workbench-storage",
                    help="the Secret holding the storage URL (PostgreSQL), given to the driver as WORKBENCH_STORAGE")
    kp.add_argument("--secret-key", default="url", help="the key of the URL in the Secret")
    kp.add_argument("--name", default="workbench", help="prefix of every object's name")
    kp.add_argument("--namespace", default="default")
    kp.add_argument("--cpu", default="1", help="CPU request of a worker pod (no limit)")
    kp.add_argument("--memory", default="2Gi", help="memory request and limit of a worker pod")
    kp.set_defaults(func=_k8s)

    wp = sub.add_parser("work")  # no help: not listed (started by `sweep --workers`)
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

    pl = sub.add_parser("plan", help="print the resolved search space and its number of distinct "
                                     "configurations (runs nothing)")
    pl.add_argument("config", help="experiment YAML file")
    pl.set_defaults(func=_plan)

    rp = sub.add_parser("report", help="write results.csv, report.md, report.html, plots, best.json")
    rp.add_argument("run_dir")
    rp.add_argument("--no-remeasure", action="store_true",
                    help="decide on the sweep's numbers, without the interleaved re-measurement")
    rp.set_defaults(func=_report)

    ep = sub.add_parser("export", help="bundle a trial's artifact, config, metrics and predict.py")
    ep.add_argument("run_dir")
    ep.add_argument("--trial", help="trial number (default: the recommended one in best.json)")
    ep.add_argument("--out", help="bundle directory (default: RUN_DIR/export/trial-N)")
    ep.add_argument("--engine", default="builtin",
                    help="kserve: also write inferenceservice.yaml (KServe on Kubernetes)")
    ep.set_defaults(func=_export)

    ip = sub.add_parser("image", help="build an OCI image (podman) that serves a bundle with the builtin engine")
    ip.add_argument("bundle", help="a directory written by `workbench export`")
    ip.add_argument("--tag", required=True, help="the image's name, e.g. digits-cnn:1")
    ip.set_defaults(func=_image)

    bp = sub.add_parser("bench", help="p50 of the workbench's timing loop vs a bare loop (onnxruntime)")
    bp.add_argument("model", help="an .onnx file")
    bp.add_argument("--batch-size", type=int, default=1)
    bp.add_argument("--threads", type=int, default=1)
    bp.add_argument("--seconds", type=float, default=1.0, help="seconds per repeat")
    bp.add_argument("--repeats", type=int, default=5, help="total time is seconds x repeats")
    bp.set_defaults(func=_bench)

    sv = sub.add_parser("serve", help="serve an exported bundle over the Open Inference Protocol (v2 REST)")
    sv.add_argument("bundle", help="a directory written by `workbench export`")
    sv.add_argument("--engine", default="builtin", help="serving engine: builtin (default) or kserve")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--name", default="model", help="model name in the /v2/models/{name} routes")
    sv.add_argument("--grpc-port", type=int, help="also serve the v2 protocol over gRPC on this port "
                                                  "(same host; builtin engine)")
    # batching defaults: as the bundle's trial was measured (Bundle.serving: a server trial's own
    # settings; any other trial: batches up to its batch size, policy idle, no delay)
    sv.add_argument("--max-batch-size", type=int, help="rows per batch (1: no batching; default: as measured)")
    sv.add_argument("--max-queue-delay-ms", type=float,
                    help="longest wait of a batch's first request for company (policy delay; default: as measured)")
    sv.add_argument("--batch-policy", help="delay (wait up to the delay) or idle (never wait; default unless "
                                           "the bundle's server trial measured delay)")
    sv.add_argument("--max-queue", type=int, default=256, help="queued requests beyond this get 503")
    sv.add_argument("--instances", type=int, help="model instances (sessions) serving batches (default: as measured)")
    sv.add_argument("--threads", type=int, help="intra-op threads per instance (default: the bundle's)")
    sv.add_argument("--trust-model-code", action="store_true",
                    help="let the model run Python code it carries (a .keras Lambda layer); a bundle's "
                         "own config.json never decides this")
    sv.add_argument("--auth-token-env", metavar="VAR",
                    help="require 'Authorization: Bearer TOKEN' on every route but the health probes, TOKEN "
                         "read from the environment variable VAR (never from the command line)")
    sv.add_argument("--log", help="append the server's output to this file (default: its errors "
                                               "and tracebacks on this terminal's stderr)")
    sv.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for the model")
    sv.set_defaults(func=_serve)

    lp = sub.add_parser("load", help="open-loop Poisson (or closed-loop) load on a v2 model",
                        epilog="exit codes: 0 a valid run; 1 the run finished but is INVALID (over 1%% of "
                               "sends more than 1 ms late, the generator over 80%% of a core, or over 0.1%% "
                               "of requests failed; why: on stderr and in invalid_reasons); 2 bad arguments "
                               "or a URL that is not a v2 model (nothing was sent)")
    lp.add_argument("url", help="the server's root (http://127.0.0.1:8000, model 'model'), the model's URL "
                                "(.../v2/models/NAME) or its infer route (.../v2/models/NAME/infer)")
    lp.add_argument("--rate", type=float, help="offered QPS (open loop, Poisson arrivals)")
    lp.add_argument("--duration", type=float, help="seconds of open-loop load")
    lp.add_argument("--concurrency", type=int, help="clients of a closed loop")
    lp.add_argument("--requests", type=int, help="requests of a closed loop")
    lp.add_argument("--data", help=".npz with x_eval (and y_eval: answers are scored)")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--binary", action="store_true", help="send .npy bodies instead of JSON tensors")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.set_defaults(func=_load)

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
    ap = parser()
    try:
        args, extra = ap.parse_known_args(argv)
        if extra:  # the command's own usage, not the top-level one
            hint = " (a parameter is one word: -p NAME=VALUE, e.g. -p bits=8)" if args.command == "trial" else ""
            ap.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    except SystemExit as done:  # --help (0) or a usage error (2), already printed by argparse
        return done.code if isinstance(done.code, int) else 2
    try:
        return args.func(args)
    except WorkbenchError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        kept = {"sweep": "completed trials are kept in the study; run the same command to continue",
                "image": "the half-built image and its containers are removed"}
        print("interrupted" + (f": {kept[args.command]}" if args.command in kept else ""), file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: never a traceback on the terminal
        return _internal_error(err)


if __name__ == "__main__":
    sys.exit(main())
