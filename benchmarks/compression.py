"""Compression variants of the builtin models: accuracy, size, latency at batch 1 and 32.

Writes benchmarks/compression.md (``python benchmarks/compression.py [MODEL ...]`` re-measures
only those models and keeps the other sections). Every row is a real trial.run (the same code path a sweep's
notebook runs), one thread, on this machine; pruned or failed variants are listed with their
reason, slow ones are kept.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from workbench import trial
from workbench.core import fingerprint

MEASURE = dict(warmup=10, min_runs=30, min_seconds=float(os.environ.get("BENCH_MIN_SECONDS", "0.5")),
               max_seconds=5.0, threads=1)
MODELS = [("digits_cnn", "digits"), ("digits_mlp", "digits"), ("cnn32", "digits32"),
          ("text_transformer", "text")]
VARIANTS = [
    ("Keras fp32 (TensorFlow)", dict(runtime="tensorflow")),
    ("ORT fp32", dict()),
    ("ORT fp16", dict(bits=16)),
    ("ORT int8 dynamic", dict(bits=8, int8_mode="dynamic")),
    ("ORT int8 static QDQ", dict(bits=8, int8_mode="static")),
    ("ORT int8 static QDQ per-channel", dict(bits=8, int8_mode="static", per_channel=True)),
    ("ORT int4 weight-only", dict(bits=4)),
    ("ORT fp32, 50% unstructured", dict(sparsity=0.5)),
    ("ORT fp32, 80% unstructured", dict(sparsity=0.8)),
    ("ORT fp32, 50% channels", dict(sparsity=0.5, prune_structure="channels")),
    ("ORT int8 static, 50% channels", dict(sparsity=0.5, prune_structure="channels", bits=8)),
    ("OpenVINO fp32", dict(runtime="openvino")),
    ("OpenVINO int8 (QDQ)", dict(runtime="openvino", bits=8)),
    ("LiteRT fp32", dict(runtime="litert")),
    ("LiteRT fp16", dict(runtime="litert", bits=16)),
    ("LiteRT int8 dynamic-range", dict(runtime="litert", bits=8, int8_mode="dynamic")),
    ("LiteRT full int8", dict(runtime="litert", bits=8, int8_mode="static")),
]


NOTES = """## Reading the table

- **Target (32x32 CNN):** a variant at most 1 point less accurate, at least 3x faster at batch 1
  than Keras fp32 and at least 4x smaller. Look at "ORT int8 static, 50% channels" (channel
  pruning removes whole filters, so there is less to compute, then static QDQ int8) and "ORT int8
  static QDQ" (about 4x smaller than the fp32 ONNX model, several times faster).
- **Dynamic int8 on convolutions is slower than fp32** in onnxruntime: dynamic quantization turns
  Conv into ConvInteger, which quantizes activations at run time and has no fast kernels on x86;
  static QDQ lets onnxruntime fuse into QLinearConv with VNNI kernels. On Dense-only models
  (the MLP) dynamic int8 is fine.
- **fp16 gives no reliable speed-up on a CPU:** weights are stored in fp16 and most kernels
  compute in fp32 after a Cast; its value is the halved size. Differences of a few tens of
  percent either way are within this shared machine's noise.
- **Unstructured sparsity does not speed up onnxruntime:** zeros are still multiplied. Its
  benefit is the compressed size (gzip column); channel pruning is what makes pruning faster.
- **int4** exists only as weight-only MatMulNBits: it applies to the MLP (all weights in MatMul)
  and is refused on the CNN, whose MatMul holds a negligible share of the weights.
- **The Keras file size** is the `.keras` archive as trained, including the optimizer state, so
  compare sizes with "ORT fp32" for the weight reduction of a variant.
- **The text transformer is MatMul-bound** (token ids + mask, two int32 inputs; embedding
  Gathers, attention projections and the feed-forward are MatMuls, there is no Conv), so the
  paths that are refused or slow on the CNNs apply to it: ORT dynamic int8 (MatMulInteger, no
  calibration) and int4 MatMulNBits (most weights are in MatMul/Gather) keep 100% accuracy at
  2.3-2.5x less size. At this size (~73k parameters, 32 tokens) a call is ~0.1 ms, so the
  runtime's per-call overhead weighs as much as the arithmetic: in onnxruntime neither int8
  nor int4 is faster than fp32, and static QDQ is slower and loses ~1.4 points (the Q/DQ pairs
  around small MatMuls, softmax and LayerNorm cost more than they save; integer inputs are left
  unquantized). **What wins is LiteRT** (XNNPACK, the lowest per-call overhead): fp32 already
  1.5x faster than ORT fp32, and dynamic-range int8 the fastest and smallest variant at no
  accuracy cost. **OpenVINO int8 of the QDQ graph loses ~16 points** on this model (its own
  int8 attention kernels), while OpenVINO fp32 is exact: check accuracy, never assume it.
  Channel pruning is refused (the graph is not a chain of Conv/Dense layers) with that reason;
  unstructured pruning costs nothing in accuracy and buys only gzip size.
- **Negative drops** after pruning are fine-tuning gains on a small eval split (360 images); one
  image is 0.28 points.
"""


def fmt(v, spec=".3f"):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _sections(text: str) -> dict[str, list[str]]:
    """The ``## model`` sections of an existing compression.md, by model name."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].split(" ")[0]
            if current == "Reading":
                break
            out[current] = []
        if current:
            out[current].append(line)
    return out


def main(only: list[str]) -> None:
    lines = []
    fp = fingerprint.collect()
    path = HERE / "compression.md"
    kept = _sections(path.read_text()) if only and path.exists() else {}
    lines += ["# Compression variants", "",
              f"Generated by `benchmarks/compression.py` on {time.strftime('%Y-%m-%d')}. Machine: "
              f"{fp['cpu']['model']}, {fp['cpu']['cores']} cores, flags {', '.join(fp['cpu']['flags'])}. "
              f"One thread; warm-up 10, then at least 30 runs and {MEASURE['min_seconds']} s per "
              "cell; p50/p90 per batch in ms. Speed-ups are p50 at batch 1. The machine is shared "
              "(other jobs ran at the same time), so treat differences under ~10% as noise.", ""]
    for model, data in MODELS:
        if only and model not in only:
            lines += kept.get(model, [])
            continue
        rows = []
        for name, extra in VARIANTS:
            res = {}
            for batch in (1, 32):
                m = trial.run(dict(model=model, data=data, batch_size=batch, **MEASURE, **extra))
                res[batch] = m
                if m["status"] != "complete":
                    break
            rows.append((name, res))
            print(model, name, res[1]["status"], res[1].get("latency_p50_ms"), flush=True)
        keras = next(r for n, r in rows if n.startswith("Keras"))[1]
        ort = next(r for n, r in rows if n == "ORT fp32")[1]
        lines += [f"## {model} (data `{data}`, fp32 accuracy {keras.get('baseline_accuracy', 0):.2f}%)", "",
                  "| variant | accuracy % | drop pt | size bytes | gzip bytes | p50 b1 | p90 b1 | "
                  "p50 b32 | p90 b32 | speed-up vs Keras | speed-up vs ORT fp32 | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, res in rows:
            b1, b32 = res[1], res.get(32, {})
            if b1["status"] != "complete":
                lines.append(f"| {name} | | | | | | | | | | | pruned: {b1['reason']} |")
                continue
            note = "unstable" if b1.get("unstable") or b32.get("unstable") else ""
            if "sparsity_reached" in b1:
                note += f" sparsity {b1['sparsity_reached']:.2f}, params -{b1['params_removed_fraction']:.0%}"
            lines.append(
                f"| {name} | {b1['accuracy']:.2f} | {b1['accuracy_drop']:.2f} | {b1['size_bytes']:,} | "
                f"{b1['size_gzip_bytes']:,} | {fmt(b1['latency_p50_ms'])} | {fmt(b1['latency_p90_ms'])} | "
                f"{fmt(b32.get('latency_p50_ms'))} | {fmt(b32.get('latency_p90_ms'))} | "
                f"{keras['latency_p50_ms'] / b1['latency_p50_ms']:.2f}x | "
                f"{ort['latency_p50_ms'] / b1['latency_p50_ms']:.2f}x | {note.strip()} |")
        lines.append("")
    lines += NOTES.splitlines()
    (HERE / "compression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
