"""``workbench bench``: the overhead of the workbench's timing loop against a bare ``for`` loop.

A user who doubts the numbers can time their own ONNX file both ways, in one process, on the
same fixed input.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench import runtimes
from workbench.config.params import TrialParams
from workbench.core.errors import WorkbenchError, first_line
from workbench.measure import timing


def bench_onnx(model: str | Path, batch_size: int = 1, threads: int = 1, seconds: float = 1.0,
               repeats: int = 5, warmup: int = 20, block: int = 20) -> dict[str, Any]:
    """p50 of the workbench's timing path vs a bare ``for`` loop around ``InferenceSession.run``.

    Both time the same session on the same fixed input in this process, in short alternating
    blocks of ``block`` calls (for ``repeats`` x ``seconds`` in all), so a noisy neighbour on a
    shared machine hits both alike; each p50 is over all of its calls. The workbench side is
    :func:`timing.time_calls` on the workbench Session (its wrapper and lambda included); the
    bare side calls the raw onnxruntime session with a prebuilt feed dict, timed per call with
    ``perf_counter_ns`` too (a p50 needs per-call times).
    """
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
    with timing.exclusive():
        end = clock() + int(seconds * repeats * 1e9)
        while clock() < end or len(br) < 100:
            wb.append(timing.time_calls(lambda: session.run(batch), warmup=0, min_runs=block,
                                         min_seconds=0, max_seconds=3600, settle=False))
            br.extend(bare(block))
    session.close()
    wb_ms, br_ms = np.concatenate(wb) / 1e6, np.asarray(br) / 1e6
    w, b = float(np.median(wb_ms)), float(np.median(br_ms))
    return {"model": str(model), "batch_size": batch_size, "threads": threads, "calls_each": len(br_ms),
            "workbench_p50_ms": w, "bare_loop_p50_ms": b, "ratio": w / b if b > 0 else float("nan"),
            "workbench_p50_ci_ms": list(timing.bootstrap_median_ci(wb_ms, resamples=200)),
            "bare_loop_p50_ci_ms": list(timing.bootstrap_median_ci(br_ms, resamples=200))}
