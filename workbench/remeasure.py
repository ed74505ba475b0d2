"""Measurements outside a sweep: the interleaved re-measurement of the leading candidates
(``workbench.decide`` runs it and decides; this module only times), and the overhead check of the workbench's timing loop against a bare ``for`` loop.

Re-measurement runs in a fresh process (``python -m workbench.remeasure``, JSON on stdin and
stdout) so the candidates share one clean process, one set of imports and one stretch of time,
instead of two kernels minutes apart on a noisy machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench import measure
from workbench.errors import WorkbenchError, first_line

class RemeasureError(WorkbenchError):
    """Candidates could not be re-opened or re-measured (the recommendation then stands as is)."""


def open_candidate(params: dict[str, Any], artifact: str | None, artifact_format: str | None):
    """A session on a trial's artifact with the trial's runtime options, and its timing batch.

    The recorded artifact path is used when it still exists (same machine, same cache);
    otherwise the artifact is rebuilt from the recorded parameters (cached by content).
    """
    from workbench import data as data_mod
    from workbench import runtimes, trial, variants
    from workbench.params import TrialParams

    p = TrialParams.parse(params)
    if artifact and Path(artifact).exists():
        data = data_mod.load(p.data, p.task)
        art = variants.Artifact(Path(artifact), artifact_format or "onnx", "", ())
    else:
        data, _, art = trial.artifact_for(p)
    session = runtimes.load(p, art)
    return session, trial.timing_batch(data.x_eval, p.batch_size), p


def interleave_rounds(candidates: list[dict[str, Any]], rounds: int = 7, slot_seconds: float = 0.15,
                      warmup: int = 10, min_calls: int = 20) -> dict[str, Any]:
    """Open every candidate here and time them in ``rounds`` rounds, in rotating order.

    In round ``r`` the candidates are timed one after the other starting with candidate
    ``r mod k``, each for ``slot_seconds`` (and at least ``min_calls`` calls), so every
    candidate is exposed to the same stretches of a drifting machine and pairs round by round
    with every other. ``candidates``: dicts with ``trial``, ``params``, ``artifact``,
    ``artifact_format``. Returns per-call times (ms) per round, the orders and batch sizes.
    """
    if rounds < 2:
        raise RemeasureError("an interleaved re-measurement needs at least two rounds")
    opened = [open_candidate(c["params"], c.get("artifact"), c.get("artifact_format"))
              for c in candidates]
    names = [str(c["trial"]) for c in candidates]
    fns = {n: (lambda s=s, b=b: s.run(b)) for n, (s, b, _) in zip(names, opened)}
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    orders = []
    try:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        with measure.exclusive():
            for r in range(rounds):
                k = r % len(names)
                order = names[k:] + names[:k]
                orders.append(order)
                for n in order:
                    t = measure.time_calls(fns[n], warmup=1, min_runs=min_calls, min_seconds=slot_seconds,
                                           max_seconds=max(slot_seconds * 10, 1.0), settle=False)
                    times[n].append((t / 1e6).tolist())
    finally:
        for s, _, _ in opened:
            s.close()
    return {"times_ms": times, "orders": orders,
            "batch_size": {n: p.batch_size for n, (_, _, p) in zip(names, opened)}}


def rounds_in_subprocess(candidates: list[dict[str, Any]], rounds: int = 7, slot_seconds: float = 0.15,
                         timeout_s: float = 300.0) -> dict[str, Any]:
    """:func:`interleave_rounds` in a fresh Python process; :class:`RemeasureError` on failure."""
    req = json.dumps({"candidates": candidates, "rounds": rounds, "slot_seconds": slot_seconds})
    try:
        proc = subprocess.run([sys.executable, "-m", "workbench.remeasure"], input=req,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RemeasureError(f"interleaved re-measurement took more than {timeout_s:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RemeasureError("interleaved re-measurement failed: " + (lines[-1] if lines else "?"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_onnx(model: str | Path, batch_size: int = 1, threads: int = 1, seconds: float = 1.0,
               repeats: int = 5, warmup: int = 20, block: int = 20) -> dict[str, Any]:
    """p50 of the workbench's timing path vs a bare ``for`` loop around ``InferenceSession.run``.

    Both time the same session on the same fixed input in this process, in short alternating
    blocks of ``block`` calls (for ``repeats`` x ``seconds`` in all), so a noisy neighbour on a
    shared machine hits both alike; each p50 is over all of its calls. The workbench side is
    :func:`measure.time_calls` on the workbench Session (its wrapper and lambda included); the
    bare side calls the raw onnxruntime session with a prebuilt feed dict, timed per call with
    ``perf_counter_ns`` too (a p50 needs per-call times).
    """
    from workbench import runtimes
    from workbench.params import TrialParams

    path = Path(model)
    if not path.is_file():
        raise WorkbenchError(f"{model}: no such ONNX file")
    try:
        session = runtimes.get("onnxruntime").open_session(path, TrialParams(batch_size=batch_size,
                                                                             threads=threads))
    except Exception as err:  # noqa: BLE001 - a broken file is a user error here
        raise WorkbenchError(f"{model}: onnxruntime cannot load it: {first_line(err)}") from None
    raw = session._sess
    inp = raw.get_inputs()[0]
    shape = [batch_size] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    batch = np.ascontiguousarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    feed = {inp.name: batch}
    outs = [raw.get_outputs()[0].name]
    run = raw.run
    clock = time.perf_counter_ns

    def bare(n: int) -> list[int]:
        times = []
        for _ in range(n):
            t0 = clock()
            run(outs, feed)
            times.append(clock() - t0)
        return times

    for _ in range(warmup):
        run(outs, feed)
        session.run(batch)
    wb: list[np.ndarray] = []
    br: list[int] = []
    with measure.exclusive():
        end = clock() + int(seconds * repeats * 1e9)
        while clock() < end or len(br) < 100:
            wb.append(measure.time_calls(lambda: session.run(batch), warmup=0, min_runs=block,
                                         min_seconds=0, max_seconds=3600, settle=False))
            br.extend(bare(block))
    session.close()
    wb_ms, br_ms = np.concatenate(wb) / 1e6, np.asarray(br) / 1e6
    w, b = float(np.median(wb_ms)), float(np.median(br_ms))
    return {"model": str(model), "batch_size": batch_size, "threads": threads, "calls_each": len(br_ms),
            "workbench_p50_ms": w, "bare_loop_p50_ms": b, "ratio": w / b if b > 0 else float("nan"),
            "workbench_p50_ci_ms": list(measure.bootstrap_median_ci(wb_ms, resamples=200)),
            "bare_loop_p50_ci_ms": list(measure.bootstrap_median_ci(br_ms, resamples=200))}


def _main() -> int:
    req = json.loads(sys.stdin.read())
    result = interleave_rounds(req["candidates"], rounds=int(req.get("rounds", 7)),
                               slot_seconds=float(req.get("slot_seconds", 0.15)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
