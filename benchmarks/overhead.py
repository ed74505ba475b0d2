"""Per-trial overhead of the papermill path over calling trial.run in-process (cached artifact).

Writes benchmarks/overhead.md. Run with `make bench` or `.venv/bin/python benchmarks/overhead.py`.
Trials run one after another as a sweep runs them: each in a fresh kernel started while the
previous one ran (and, for comparison, started on demand). Where the time goes is split with
papermill's per-cell durations recorded in the executed notebooks.

"Before" is the same measurement of the workbench as of git revision BEFORE (extracted with
`git archive` and put first on PYTHONPATH, which the kernels inherit), "after" that of this
checkout; both in the same run, alternating, so that they see the same machine load. Pass
`--before REV` to compare with another revision (or `--before ''` to measure this checkout only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __name__ == "__main__" and "--measure" in sys.argv:  # a child measuring the tree it was given
    sys.path.insert(0, sys.argv[sys.argv.index("--measure") + 1])
else:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from workbench import trial  # noqa: E402

try:  # the package layout since issue 18; a "before" tree may have the flat one of before
    from workbench.core import fingerprint
    from workbench.sweep import notebook
except ImportError:
    from workbench import fingerprint, notebook  # type: ignore[no-redef]

REPEATS = 7  # trials counted per round and variant (after one that has no kernel ahead)
ROUNDS = 2  # before, after, before, after: both see the same load
BEFORE = "accc87d"  # the workbench before issue 18 item 4 (kernels ahead, as of 2026-11-29)
PARAMS = dict(bits=8, int8_mode="static", batch_size=1, threads=1, warmup=10, min_runs=50,
              min_seconds=0.2, max_seconds=5.0)
KEYS = ("wall", "inside", "pm", "cells", "trial_cell")


def median(xs):
    return statistics.median(xs)


def empty_notebook_seconds(tmp: Path) -> list[float]:
    import papermill as pm

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass", metadata={"tags": ["parameters"]})])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp / "empty.ipynb"
    nbformat.write(nb, src)
    out = []
    for i in range(REPEATS):
        t0 = time.perf_counter()
        pm.execute_notebook(str(src), str(tmp / f"empty-{i}.ipynb"), kernel_name="python3",
                            progress_bar=False, cwd=str(tmp),
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
        out.append(time.perf_counter() - t0)
    return out


def import_seconds(statement: str) -> list[float]:
    code = f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"
    return [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]) for _ in range(REPEATS)]


def papermill_split(path: Path) -> tuple[float, float, float]:
    """(notebook duration as papermill recorded it, time in cells, time in the trial cell)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c.metadata.get("papermill", {}).get("duration") or 0.0 for c in nb.cells]
    return nb.metadata["papermill"]["duration"], sum(cells), max(cells)


def notebook_path(tmp: Path, ahead: bool) -> dict[str, list[float]]:
    """REPEATS trials one after another, as a sweep runs them (kernel started ahead or not)."""
    out: dict[str, list[float]] = {k: [] for k in KEYS}
    with notebook.Kernels(tmp / "spare", ahead=ahead) as kernels:
        for i in range(REPEATS + 1):
            t0 = time.perf_counter()
            m = notebook.execute(PARAMS, tmp / f"{'ahead' if ahead else 'cold'}-{i}", kernels=kernels)
            wall = time.perf_counter() - t0
            if i == 0:  # the first trial of a sweep has no kernel ahead of it
                continue
            pm_s, cells, trial_cell = papermill_split(Path(m["notebook"]))
            for k, v in zip(KEYS, (wall, m["total_seconds"], pm_s, cells, trial_cell)):
                out[k].append(v)
    return out


def measure_tree(tree: Path, tmp: Path) -> dict[str, list[float]]:
    """notebook_path(ahead=True) in a child process whose workbench (and its kernels') is
    ``tree``'s."""
    out_file = tmp / f"result-{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, __file__, "--measure", str(tree), str(out_file)], env=env,
                   check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    return json.loads(out_file.read_text())


def extract(rev: str, dest: Path) -> Path | None:
    """The workbench package and notebooks of git revision ``rev``, or None if git cannot."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "workbench", "notebooks"],
                             capture_output=True)
    if archive.returncode != 0:
        print(f"no 'before' column: git archive {rev}: {archive.stderr.decode().strip()}", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def breakdown(d: dict[str, list[float]], warm: float) -> list[float]:
    def med(k):
        return median(d[k])

    return [
        med("wall"),
        med("inside"),
        warm,
        med("wall") - warm,
        med("wall") - med("pm"),
        med("pm") - med("cells"),
        med("cells") - med("trial_cell"),
        med("trial_cell") - med("inside"),
        med("inside") - warm,
    ]


ROWS = [
    "papermill trial notebook, wall, kernel started ahead (as a sweep runs it)",
    "trial.run inside that notebook",
    "trial.run in-process, warm (imports done)",
    "**overhead: notebook wall - in-process trial.run**",
    "of which: sweep side, outside papermill's notebook clock (taking the kernel ahead, read, parameterize, kernel shutdown)",
    "of which: papermill, outside cells (kernel handshake, saves)",
    "of which: cells other than the trial cell (parameters, injected parameters)",
    "of which: trial cell beyond trial.run (imports the kernel ahead had no time for; write, summary)",
    "of which: trial.run in the notebook beyond in-process (waiting for the measurement lock, first imports and runs of a fresh process)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git revision measured as 'before' ('' for none)")
    parser.add_argument("--measure", nargs=2, metavar=("TREE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            Path(args.measure[1]).write_text(json.dumps(notebook_path(Path(tmp), ahead=True)))
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Our own measurement lock: other jobs' timed sections (another sweep, a test suite)
        # would otherwise hold up this benchmark's trials. Kernels inherit it.
        os.environ["WORKBENCH_LOCK_DIR"] = str(tmp)
        trial.run(PARAMS)  # build and cache the artifact
        in_process = [trial.run(PARAMS)["total_seconds"] for _ in range(REPEATS)]
        before_tree = extract(args.before, tmp / "before") if args.before else None
        variants = {"after": ROOT, **({"before": before_tree} if before_tree else {})}
        runs: dict[str, dict[str, list[float]]] = {v: {k: [] for k in KEYS} for v in variants}
        for _ in range(ROUNDS):
            for name in sorted(variants):  # "after" then "before"
                for k, v in measure_tree(variants[name], tmp).items():
                    runs[name][k] += v
        cold = notebook_path(tmp, ahead=False)
        empty = empty_notebook_seconds(tmp)
    imp_trial = import_seconds("import workbench.trial")
    imp_ort = import_seconds("import onnxruntime")
    imp_tf = import_seconds("import tensorflow")
    tf_in_trial = subprocess.run(
        [sys.executable, "-c", f"import sys; from workbench import trial; trial.run({PARAMS!r}); "
                               "print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    load_after = os.getloadavg()

    warm = median(in_process)
    after = breakdown(runs["after"], warm)
    before = breakdown(runs["before"], warm) if "before" in runs else None
    overhead = after[3]
    cold_overhead = median(cold["wall"]) - warm
    fp = fingerprint.collect()
    n = REPEATS * ROUNDS
    if before:
        header = [f"| what | before ({args.before}) | after |", "| --- | --- | --- |"]
        table = [f"| {name} | {b:.3f} | {a:.3f} |" for name, b, a in zip(ROWS, before, after)]
    else:
        header = ["| what | seconds |", "| --- | --- |"]
        table = [f"| {name} | {a:.3f} |" for name, a in zip(ROWS, after)]
    scale_rows = [
        ("kernel started on demand for every trial (no kernel ahead): wall", median(cold["wall"])),
        ("kernel started on demand: overhead", cold_overhead),
        ("for scale: empty notebook through papermill (kernel start + papermill)", median(empty)),
        ("for scale: `import workbench.trial` in a fresh interpreter (preloaded by kernels ahead)", median(imp_trial)),
        ("  (part of a trial) `import onnxruntime` (preloaded by kernels ahead)", median(imp_ort)),
        ("for scale: `import tensorflow` (not paid by a cached trial)", median(imp_tf)),
    ]
    scale = [f"| {name} | {'| ' if before else ''}{value:.3f} |" for name, value in scale_rows]
    lines = [
        "# Per-trial overhead of the papermill path",
        "",
        f"Generated by `benchmarks/overhead.py` on {time.strftime('%Y-%m-%d %H:%M')}; median of {n} "
        f"trials per column ({ROUNDS} rounds of {REPEATS} run one after another, the first trial of "
        f"each round, which has no kernel ahead, not counted; before and after alternating). Machine: "
        f"{fp['cpu']['model']}, {fp['cpu']['cores']} cores; papermill {fp['versions']['papermill']}, "
        f"onnxruntime {fp['versions']['onnxruntime']}. Load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after: "
        f"{'the machine was shared with other jobs during this run' if max(load_before[0], load_after[0]) > 0.5 else 'otherwise idle'}.",
        f"Trial: {json.dumps(PARAMS)} on the builtin digits CNN, artifact already cached.",
        "",
        *header,
        *table,
        *scale,
        "",
        f"Target: overhead at most 0.5 s. Measured: {overhead:.2f} s "
        f"({'met' if overhead <= 0.5 else 'NOT met'})"
        + (f"; before ({args.before}), in the same run: {before[3]:.2f} s" if before else "")
        + f"; the kernel started on demand, in the same run: {cold_overhead:.2f} s. Compare runs "
        "only under similar load: everything above scales with it (`import tensorflow` is ~4.3 s idle).",
        f"A cached trial imports TensorFlow: {tf_in_trial} (it must be False).",
        "",
        "How: every trial still gets a fresh kernel, started while the previous trial ran",
        "(`notebook.Kernels`). It starts under the machine-wide measurement lock, so its burst of",
        "CPU never overlaps a trial's timed calls, and a trial whose artifact is cached reaches",
        "its timed calls before a kernel has started: whatever the kernel ahead does under the lock",
        "the trial waits for. So the kernel ahead holds the lock only to start (without",
        "ipykernel's debugger, whose debugpy import was 0.12 s of it; ready on its first",
        "`kernel_info` reply, not after jupyter_client's 0.2 s of IOPub silence), then imports what",
        "a trial imports (`notebook.PRELOAD`) one module at a time, taking the lock again for each",
        "after a pause in which a waiting trial takes it first. The trial's own client connects",
        "with one `kernel_info` round trip (not `wait_for_ready`'s 0.2 s), papermill saves the",
        "notebook when it starts and ends rather than around every cell, and a used kernel is",
        "killed and reaped in milliseconds (jupyter_client polls every 0.1 s for it to go), its",
        "clean-up left to a background thread. What remains is the kernel start that a trial",
        "still waits for, the imports the kernel ahead had no time for, and what a fresh process",
        "pays inside trial.run that the warm in-process loop does not.",
        "Both processes use a core while the current trial runs: on a busy or 2-core machine",
        "they compete with each other (measured overheads grow with the load).",
    ]
    (HERE / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
