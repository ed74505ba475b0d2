"""``workbench export``: the chosen trial as a directory someone can deploy from.

A bundle holds the artifact, the trial's parameters (``config.json``), its metrics
(``metrics.json``), a sample input (``sample_input.npy``; ``.npz`` of named arrays for a model
with several inputs), a small labelled eval sample (``check_inputs.np[yz]``,
``check_targets.npy``, ``check.json``) and a ``predict.py`` that needs
only the runtime's own package and numpy. ``predict.py`` opens the artifact with exactly the
session options the trial was measured with: the dict its runtime plug-in's
``session_options`` returned for the trial (written into ``predict.py`` and ``bundle.json``), so
what ships is what was measured. ``python predict.py --check`` re-measures the quality on the
bundled sample (the quality workbench measured on the same rows, with the same artifact and
options, is in ``check.json``) and the p50 latency, as a ratio to the trial's p50.

Export never deletes what it did not write: ``.workbench-bundle.json`` lists the files of a
bundle; an existing ``--out`` without it (and not empty) is refused, and re-exporting over a
bundle removes only the files its marker lists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from workbench.errors import WorkbenchError

MARKER = ".workbench-bundle.json"
CHECK_ROWS = 200  # rows of the eval split bundled for --check


class ExportError(WorkbenchError):
    """The trial to export does not exist, did not complete, its artifact is gone, or --out is
    not a place export may write to."""


PREDICT = '''"""Run the exported model: python predict.py INPUT.npy [--out OUTPUT.npy]
or re-measure it on the bundled sample: python predict.py --check [--json]

Trial {trial} of {experiment}/{study}: {label}.
Runtime {runtime}, opened with the session options the trial was measured with (OPTIONS below,
also in bundle.json). Inputs: an .npy array, or an .npz of named arrays for a model with several.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Mapping

import numpy as np

HERE = Path(__file__).resolve().parent
OPTIONS = {options}
SAMPLE_NDIM = {sample_ndim}  # dimensions of one sample (per input)


# The input helpers of workbench.inputs, copied here so that this file needs only numpy.
{helpers}

def read_inputs(path):
    """An .npy array, or an .npz of named arrays; float inputs as float32."""
    if str(path).endswith(".npz"):
        with np.load(path) as z:
            return cast_float32({{k: z[k] for k in z.files}})
    return cast_float32(np.load(path))


def load():
    """A function from a float32 batch to the model's outputs."""
    {load}


def check(run, as_json=False):
    """Quality on the bundled sample, and p50 latency at the trial's batch size."""
    info = json.loads((HERE / "check.json").read_text())
    x = read_inputs(HERE / info["inputs"])
    y = np.load(HERE / "check_targets.npy")
    b, n = info["batch_size"], rows(x)
    out = np.concatenate([np.asarray(run(take(x, i, i + b))) for i in range(0, n, b)])
    if info["task"] == "regression":
        err = out.astype(np.float64).reshape(len(y), -1) - y.astype(np.float64).reshape(len(y), -1)
        quality = {{"mae": float(np.mean(np.abs(err)))}}
    else:
        quality = {{"accuracy": float(np.mean(np.argmax(out, axis=-1) == y) * 100.0)}}
    batch = repeat_to(x, b)
    m = info["measurement"]
    for _ in range(m["warmup"]):
        run(batch)
    times, start = [], time.perf_counter()
    while (len(times) < m["min_runs"] or time.perf_counter() - start < m["min_seconds"]) \\
            and time.perf_counter() - start < m["max_seconds"]:
        t0 = time.perf_counter_ns()
        run(batch)
        times.append(time.perf_counter_ns() - t0)
    p50 = float(np.percentile(times, 50)) / 1e6
    result = {{**quality, "expected": info["expected"], "samples": n, "runs": len(times),
              "p50_ms": p50, "trial_p50_ms": info["trial_p50_ms"],
              "p50_ratio": p50 / info["trial_p50_ms"] if info["trial_p50_ms"] else None}}
    if as_json:
        print(json.dumps(result))
        return result
    name = next(iter(quality))
    print(f"{{name}} {{quality[name]:.4f}} on {{n}} bundled samples "
          f"(workbench measured {{info['expected'][name]:.4f}} on the same samples)")
    print(f"p50 {{p50:.4f}} ms at batch {{b}} over {{len(times)}} calls; trial p50 "
          f"{{info['trial_p50_ms']:.4f}} ms; ratio {{result['p50_ratio']:.2f}}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?", help=".npy array (.npz of named arrays): a batch, or one sample")
    ap.add_argument("--out", help="write the outputs here (.npy)")
    ap.add_argument("--check", action="store_true", help="re-measure quality and p50 on the bundled sample")
    ap.add_argument("--json", action="store_true", help="with --check: print one JSON line")
    args = ap.parse_args()
    if args.check:
        check(load(), args.json)
        return
    if not args.input:
        ap.error("give an INPUT.npy, or --check")
    x = read_inputs(args.input)
    if isinstance(x, Mapping):
        if all(v.ndim == SAMPLE_NDIM.get(k, -1) for k, v in x.items()):
            x = {{k: v[None] for k, v in x.items()}}  # a single sample
    elif x.ndim == SAMPLE_NDIM:
        x = x[None]
    y = np.asarray(load()(take(x, 0, rows(x))))
    if args.out:
        np.save(args.out, y)
    print(f"outputs {{y.shape}}, top-1: {{y.argmax(-1).tolist()}}")


if __name__ == "__main__":
    main()
'''


def _trial_metrics(run_dir: Path, number: str) -> dict[str, Any]:
    import optuna

    from workbench import report
    from workbench.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = report._run_info(run_dir)
    study = optuna.load_study(study_name=info["study"], storage=open_storage(info["storage"]))
    for t in study.get_trials(deepcopy=False):
        if str(t.number) == str(number):
            if t.state.name != "COMPLETE" or "metrics" not in t.user_attrs:
                raise ExportError(f"{run_dir}: trial {number} is {t.state.name}, not a completed trial")
            return {**t.user_attrs["metrics"], "params": {**t.user_attrs.get("params", {}),
                                                          **t.user_attrs["metrics"].get("params", {})}}
    raise ExportError(f"{run_dir}: no trial {number} in study {info['study']}")


def export(run_dir: str | Path, trial: str | int | None = None, out: str | Path | None = None) -> Path:
    """Write the bundle of ``trial`` (default: the recommended one in ``best.json``); returns its directory."""
    run_dir = Path(run_dir)
    if trial is None:
        best_path = run_dir / "best.json"
        if not best_path.exists():
            raise ExportError(f"{run_dir}: no best.json (run `workbench report {run_dir}` first, or pass --trial)")
        trial = json.loads(best_path.read_text()).get("trial")
        if trial is None:
            raise ExportError(f"{run_dir}: best.json recommends no trial (pass --trial)")
    out = Path(out) if out else run_dir / "export" / f"trial-{trial}"
    check_out(out)  # before any work: a refused --out costs nothing
    metrics = _trial_metrics(run_dir, str(trial))
    info = json.loads((run_dir / "run.json").read_text())
    return write_bundle(metrics, out, title=dict(trial=trial, experiment=info["experiment"],
                                                 study=info["study"]))


def check_out(out: Path) -> list[str]:
    """The files of the previous bundle in ``out`` (none: missing or empty); refuses anything
    else (a file, a directory export did not write, a marker it did not write)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a directory (choose a directory)")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise ExportError(f"--out {out}: exists and is not a bundle written by workbench export "
                              f"(no {MARKER}); choose a new or empty directory")
        return []
    try:
        files = json.loads(marker.read_text())["files"]
        ok = isinstance(files, list) and all(isinstance(f, str) and f and "/" not in f and "\\" not in f
                                             and f not in (".", "..") for f in files)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ExportError(f"--out {out}: {MARKER} is not a marker workbench wrote (unreadable "
                          "file list); remove the directory yourself or choose another")
    return files


def record(out: Path, name: str) -> None:
    """Add ``name`` (a file another part of workbench wrote into the bundle ``out``, e.g. a
    KServe manifest) to the marker, so that a re-export replaces it too."""
    marker = out / MARKER
    info = json.loads(marker.read_text())
    if name not in info["files"]:
        info["files"].append(name)
        marker.write_text(json.dumps(info, indent=2))


def prepare_out(out: Path) -> None:
    """Make ``out`` ready for a bundle without deleting anything export did not write: a missing
    or empty directory is used; a previous bundle loses only the files its marker lists;
    anything else is refused."""
    files = check_out(out)
    for name in files:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (out / MARKER).unlink(missing_ok=True)  # checked above: one export wrote


def write_bundle(metrics: dict[str, Any], out: Path, title: dict[str, Any] | None = None) -> Path:
    """Write the bundle of a completed trial's ``metrics`` (as ``trial.run`` returns them) to
    ``out`` (checked with :func:`prepare_out` first)."""
    import numpy as np

    from workbench import data as data_mod
    from workbench import inputs, runtimes
    from workbench.params import TrialParams
    from workbench.trial import timing_batch

    prepare_out(out)
    params = metrics["params"]
    p = TrialParams.parse(params)
    runtime = runtimes.get(p.runtime)
    artifact = Path(metrics.get("artifact") or "")
    if not metrics.get("artifact") or not artifact.exists():
        artifact = _rebuild(params)
    name = artifact.name if artifact.is_dir() else f"model{artifact.suffix}"
    options = runtime.session_options(p)
    data = data_mod.load(p.data, p.task)
    n = min(CHECK_ROWS, inputs.rows(data.x_eval))
    x_check = inputs.cast_float32(inputs.take(data.x_eval, 0, n))
    y_check = np.asarray(data.y_eval[:n])
    several = isinstance(data.x_eval, Mapping)
    ext = ".npz" if several else ".npy"

    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def wrote(fname: str) -> Path:
        written.append(fname)
        (out / MARKER).write_text(json.dumps({"workbench_bundle": 1, "files": written}, indent=2))
        return out / fname

    (out / MARKER).write_text(json.dumps({"workbench_bundle": 1, "files": written}, indent=2))
    if artifact.is_dir():
        shutil.copytree(artifact, wrote(name))
    else:
        shutil.copy2(artifact, wrote(name))
    wrote("config.json").write_text(json.dumps(params, indent=2, sort_keys=True))
    wrote("metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    _save_inputs(wrote("sample_input" + ext), timing_batch(data.x_eval, p.batch_size))
    _save_inputs(wrote("check_inputs" + ext), x_check)
    np.save(wrote("check_targets.npy"), y_check)
    fmt = metrics.get("artifact_format") or ("savedmodel" if artifact.is_dir() else artifact.suffix.lstrip("."))
    expected = _expected_quality(out, params, artifact, fmt)
    wrote("check.json").write_text(json.dumps({
        "task": p.task, "batch_size": p.batch_size, "expected": expected, "inputs": "check_inputs" + ext,
        "trial_p50_ms": metrics.get("latency_p50_ms"),
        "measurement": {k: getattr(p, k) for k in ("warmup", "min_runs", "min_seconds", "max_seconds")},
    }, indent=2))
    wrote("bundle.json").write_text(json.dumps({"runtime": p.runtime, "artifact": name,
                                                "session_options": options}, indent=2, sort_keys=True))
    title = title or {"trial": "-", "experiment": "-", "study": "-"}
    wrote("predict.py").write_text(PREDICT.format(
        **title, label=metrics.get("label", ""), runtime=p.runtime, options=repr(options),
        load=runtime.bundle_loader(name), helpers=_helpers(),
        sample_ndim=({k: v.ndim - 1 for k, v in data.x_eval.items()} if several else data.x_eval.ndim - 1)))
    return out


def _save_inputs(path: Path, x) -> None:
    import numpy as np

    if isinstance(x, Mapping):
        np.savez(path, **x)
    else:
        np.save(path, x)


def _helpers() -> str:
    """The source of the input helpers predict.py shares with the workbench (numpy and re only)."""
    import inspect

    from workbench import inputs

    fns = (inputs.rows, inputs.take, inputs.repeat_to, inputs.cast_float32, inputs.base_name,
           inputs.by_runtime_names)
    return "\n\n".join(inspect.getsource(f) for f in fns)


def _expected_quality(out: Path, params: dict[str, Any], artifact: Path, fmt: str) -> dict[str, float]:
    """The quality workbench measures on the bundled sample, through its own session of the
    trial's runtime with the trial's options. In a fresh process, as a trial runs: a runtime may
    only take its thread settings before its first use in a process (TensorFlow)."""
    code = ("import json, sys; from workbench import bundle; "
            "print(json.dumps(bundle.measure_quality(*json.loads(sys.argv[1]))))")
    check = next(out.glob("check_inputs.np[yz]"))
    args = json.dumps([params, str(artifact), fmt, str(check), str(out / "check_targets.npy")])
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")})
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"cannot open the trial's artifact {artifact} to check the bundle: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_quality(params: dict[str, Any], artifact: str, fmt: str, x_path: str,
                    y_path: str) -> dict[str, float]:
    """Quality of ``artifact`` (format ``fmt``) opened as ``params`` say, on the arrays at
    ``x_path``/``y_path``."""
    import numpy as np

    from workbench import runtimes, variants
    from workbench.errors import TrialPruned
    from workbench.params import TrialParams
    from workbench.trial import evaluate

    p = TrialParams.parse(params)
    art = variants.Artifact(Path(artifact), fmt, "", ())
    try:
        session = runtimes.load(p, art)
    except TrialPruned as err:
        raise ExportError(f"the runtime refuses the trial's own options: {err}") from None
    try:
        if x_path.endswith(".npz"):
            with np.load(x_path) as z:
                x = {k: z[k] for k in z.files}
        else:
            x = np.load(x_path)
        outputs = evaluate(session, x, p.batch_size)
        y = np.load(y_path)
    finally:
        session.close()
    if p.task == "regression":
        err = outputs.astype(np.float64).reshape(len(y), -1) - y.astype(np.float64).reshape(len(y), -1)
        return {"mae": float(np.mean(np.abs(err)))}
    return {"accuracy": float(np.mean(np.argmax(outputs, axis=-1) == y) * 100.0)}


def _rebuild(params: dict[str, Any]) -> Path:
    """The artifact from the recorded parameters (its cache entry was removed or is elsewhere)."""
    from workbench import trial
    from workbench.params import TrialParams

    return trial.artifact_for(TrialParams.parse(params))[2].path
