"""The ``predict.py`` a bundle ships: needs only its runtime's own package and numpy (the
bundle's ``requirements.txt`` pins both; without them it says so in one line).

Filled in by :func:`workbench.export.bundle.write_bundle` with the trial's session options, the
runtime's loader (``Runtime.bundle_loader``) and the input helpers of ``workbench.data.inputs``.
"""

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
import sys
import time
from pathlib import Path
from typing import Mapping

HERE = Path(__file__).resolve().parent


def missing(err):
    """One line naming the package this Python lacks, and how to install what the bundle needs."""
    sys.exit(f"error: {{err.name or err}} is not installed in this Python ({{sys.executable}}); "
             f"install the bundle's requirements: pip install -r {{HERE / 'requirements.txt'}}")


try:
    import numpy as np
except ImportError as err:
    missing(err)

OPTIONS = {options}
SAMPLE_NDIM = {sample_ndim}  # dimensions of one sample (per input)


# The input helpers of workbench.data.inputs, copied here so that this file needs only numpy.
{helpers}

def read_inputs(path):
    """An .npy array, or an .npz of named arrays; float inputs as float32."""
    if str(path).endswith(".npz"):
        with np.load(path) as z:
            return cast_float32({{k: z[k] for k in z.files}})
    return cast_float32(np.load(path))


def load():
    """A function from a float32 batch to the model's outputs (a missing runtime: one line)."""
    try:
        return _load()
    except ImportError as err:
        missing(err)


def _load():
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
