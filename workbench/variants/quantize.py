"""Quantization of an fp32 ONNX model with onnxruntime's own tools.

- 16: fp16 weights and compute, fp32 inputs/outputs kept for the caller (no speed-up on CPU).
- 8 dynamic: weights int8, activations quantized at run time. On convolutions this becomes
  ConvInteger, which is often *slower* than fp32 on CPU; we build it and report it anyway.
- 8 static: QDQ, activations calibrated on the calibration split (MinMax / Entropy /
  Percentile), per-tensor or per-channel weights. This is the fast int8 path on CPU.
- 4: weight-only MatMulNBits (block-wise), only where the graph has MatMul/Gather.

Int8 is accuracy-aware, the way Intel Neural Compressor's "basic" tuning and Olive's ONNX
quantization passes do it: ``quant_ops`` chooses which ops are quantized (all, or only the
compute-heavy MatMul/Gemm/Conv, onnxruntime's ``op_types_to_quantize``), and when the quantized
model disagrees with fp32 on the calibration split by more than the accuracy budget, the nodes
that add the most output error are kept in float (``nodes_to_exclude``) and the model is
quantized again, at most :data:`FALLBACK_ROUNDS` times. Which nodes stayed float, and why, is
written beside the artifact (:data:`RECORD_FILE`) and read back by :func:`record`.
A known onnxruntime failure gets its documented workaround and one retry (:func:`_quantize`);
any other quantizer error names the library and its version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from workbench import runtimes
from workbench.core import cache
from workbench.core.errors import TrialPruned, first_line
from workbench.core.parameter import Parameter
from workbench.data import Dataset, inputs
from workbench.variants import Artifact, Transform, register
from workbench.variants.onnx_export import ONNX_PACKAGES

INT4_BLOCK_SIZE = 32
# Below this share of weights in MatMul/Gather, an "int4" artifact would be a mislabelled fp32
# one (e.g. a CNN whose only MatMul is its classifier head).
INT4_MIN_SHARE = 0.5

# The quantization parameters (read by this transform and by the TFLite route).
BITS = Parameter("bits", 32, int, choices=(32, 16, 8, 4), must_apply=True,
                 help="weight (and activation) precision")
INT8_MODE = Parameter("int8_mode", "static", str, choices=("static", "dynamic"),
                      applies=lambda p: p.get("bits") == 8)


def _onnx_static_int8(p) -> bool:
    """Calibrated (static) int8 made by this transform: a runtime that reads ONNX. The TFLite
    converter has no choice of calibration method and always uses per-channel scales, so on
    the TFLite route these two would only rename the same bytes (identical work is measured
    once: they are not sampled there)."""
    if p.get("bits") != 8 or p.get("int8_mode") != "static":
        return False

    rt = runtimes.registered().get(p.get("runtime", ""))
    return rt is None or "onnx" in rt.formats


CALIBRATION = Parameter("calibration", "minmax", str, choices=("minmax", "entropy", "percentile"),
                        applies=_onnx_static_int8)
def _onnx_int8(p) -> bool:
    """int8 (static or dynamic) made by this transform: a runtime that reads ONNX (onnxruntime,
    OpenVINO on the ONNX QDQ model). The TFLite converter's stable API has no choice of op types
    (its counterpart there is ``int8_mode``: ``workbench.variants.tflite``)."""
    rt = runtimes.registered().get(p.get("runtime", ""))
    return p.get("bits") == 8 and (rt is None or "onnx" in rt.formats)


# The compute-heavy ops: where int8 buys speed; everything else (normalisation, softmax,
# element-wise) is where it loses accuracy first.
COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
QUANT_OPS = Parameter("quant_ops", "all", str, choices=("all", "compute"), applies=_onnx_int8,
                      help="which ops int8 quantizes: all, or only MatMul/Gemm/Conv")
# Accuracy-aware fallback: rounds of "keep the most sensitive nodes in float, quantize again".
FALLBACK_ROUNDS = 3
RECORD_FILE = "quantization.json"

# Per-channel weight scales: a choice of calibrated (static) int8 only, so a dynamic int8 trial
# never differs from another only by a flag.
PER_CHANNEL = Parameter("per_channel", False, bool, choices=(True, False), applies=_onnx_static_int8)


def matmul_weight_share(model) -> float:
    """Fraction of the model's weight elements that feed MatMul/Gather (what int4 can cover)."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2}
    total = sum(sizes.values())
    covered = sum(sizes.get(name, 0) for n in model.graph.node if n.op_type in ("MatMul", "Gather")
                  for name in n.input)
    return covered / total if total else 0.0


# Ops that only move or reshape data: no reason to choose which ops int8 touches.
SHAPE_OPS = {"Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Cast",
             "Gather", "Concat", "Slice", "Constant", "ConstantOfShape"}


def mixed_ops(model) -> bool:
    """Whether the model's compute ops (MatMul/Gemm/Conv) sit among other computing ops
    (normalisation, softmax, element-wise arithmetic): then "only the compute ops" is a real
    choice for int8 (``quant_ops``), the one that keeps those others in float."""
    types = {n.op_type for n in model.graph.node}
    return bool(types & set(COMPUTE_OPS)) and bool(types - set(COMPUTE_OPS) - SHAPE_OPS)


def recipe(params, calibration_samples: int) -> dict[str, Any]:
    """The parameters that determine the quantized artifact (and nothing else)."""
    if params.bits == 16:
        return {"bits": 16, "integer_inputs_kept": 1}  # recipe v2: index casts stay fp32
    if params.bits == 4:
        return {"bits": 4, "block_size": INT4_BLOCK_SIZE}
    # the fallback needs labels' stand-in (top-1 against fp32): classification only
    fallback = params.max_accuracy_drop if params.task == "classification" else None
    common = {"bits": 8, "ops": params.quant_ops, "fallback_budget": fallback,
              "samples": calibration_samples, "scored_subgraph": 1}  # v2: only the scored output's nodes
    if params.int8_mode == "dynamic":
        return {**common, "mode": "dynamic", "per_channel": params.per_channel}
    return {**common, "mode": "static", "per_channel": params.per_channel,
            "calibration": params.calibration}


def describe(r: dict[str, Any]) -> str:
    if r["bits"] == 8:
        return (f"int8-{r['mode']}" + ("-per-channel" if r["per_channel"] else "")
                + ("-compute-ops" if r.get("ops") == "compute" else ""))
    return {16: "fp16", 4: "int4-weight-only"}[r["bits"]]


def record(artifact_path: Path) -> dict[str, Any] | None:
    """What the int8 quantizer of ``artifact_path`` did (ops, nodes kept in float and why,
    workarounds), or None for an artifact this transform did not quantize to int8."""
    path = Path(artifact_path).parent / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else None


def apply(src: Path, dst: Path, r: dict[str, Any], data: Dataset) -> None:
    """Write the quantized version of ``src`` to ``dst``."""
    if r["bits"] == 16:
        _fp16(src, dst)
    elif r["bits"] == 4:
        _int4(src, dst, r["block_size"])
    else:
        _int8(src, dst, r, data)


def _fp16(src: Path, dst: Path) -> None:
    import warnings

    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    # Integer inputs (token ids) cast to float for index comparisons (an Embedding's bounds
    # check) must stay float32: the converter would otherwise leave their constants mismatched.
    to_float = [n.name for n in model.graph.node if n.op_type == "Cast" and
                any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    compare = list(float16.DEFAULT_OP_BLOCK_LIST) + ["Less", "Greater", "LessOrEqual",
                                                     "GreaterOrEqual", "Equal"]
    with warnings.catch_warnings():  # one warning per weight clipped to the fp16 range
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=compare,
                                                 node_block_list=to_float)
    onnx.save(model, str(dst))


def _int4(src: Path, dst: Path, block_size: int) -> None:
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    model = onnx.load(str(src))
    share = matmul_weight_share(model)
    if share == 0.0:
        raise TrialPruned("no MatMul to quantize to 4 bits")
    if share < INT4_MIN_SHARE:
        raise TrialPruned(f"no MatMul to quantize to 4 bits worth it: only {share:.1%} of the weights "
                          "are in MatMul/Gather, the rest would stay fp32")
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True)
    quantizer.process()
    onnx.save(quantizer.model.model, str(dst))


class _Calibration:
    """Feeds the calibration split to the calibrator, one sample at a time, to every input of
    the model (integer inputs such as token ids as they are: only float tensors are quantized)."""
    def __init__(self, x: inputs.Inputs, input_names: list[str]):
        x = inputs.cast_float32(x)
        self._it = iter(dict(zip(input_names, inputs.by_runtime_names(inputs.take(x, i, i + 1), input_names)))
                        for i in range(inputs.rows(x)))

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - part of the reader interface
        pass


def _prepared(src: Path, tmp: Path) -> Path:
    """Shape inference + fusions before static quantization, as onnxruntime advises."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    cwd = os.getcwd()
    try:
        # in the temporary directory: when symbolic shape inference gives up (attention
        # masks, for example) onnxruntime dumps its partial model into the current directory
        os.chdir(tmp)
        quant_pre_process(str(src), str(prepared))
    except Exception:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)
    return prepared


def _input_names(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}  # old exporters list weights as inputs too
    return [i.name for i in graph.input if i.name not in weights]


# Known onnxruntime failures and their documented workaround (an extra option): one retry.
# _adjust_weight_scale_for_int32_bias raises "truth value of an array ... is ambiguous" on
# per-channel weights of some Conv/Gemm shapes; QDQDisableWeightAdjustForInt32Bias skips that step.
KNOWN_FAILURES = {"_adjust_weight_scale_for_int32_bias": "QDQDisableWeightAdjustForInt32Bias"}


def _failed_in(err: BaseException) -> set[str]:
    """The names of the functions ``err``'s traceback passed through."""
    names, tb = set(), err.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def library_error(step: str, err: BaseException) -> TrialPruned:
    """A quantizer failure that names the library and its version (what a report shows). The
    configuration cannot be built here, like an artifact OpenVINO cannot compile: pruned with
    the reason, and the sweep builds no other trial of the same artifact (``workbench.sweep.loop``)."""
    import onnxruntime

    return TrialPruned(f"onnxruntime {onnxruntime.__version__} {step} failed: "
                       f"{type(err).__name__}: {first_line(err)}")


def _quantize(src: Path, dst: Path, r: dict[str, Any], data: Dataset, exclude: list[str],
              extra: dict[str, Any]) -> dict[str, Any]:
    """One int8 quantization of ``src``; returns the extra options it needed. A known library
    failure is retried once with its workaround; any failure names onnxruntime's version."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    ops = list(COMPUTE_OPS) if r.get("ops") == "compute" else None
    step = f"quantize_{r['mode']}"
    for attempt in (0, 1):
        try:
            if r["mode"] == "dynamic":
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                                 per_channel=r["per_channel"], op_types_to_quantize=ops,
                                 nodes_to_exclude=exclude, extra_options=extra)
            else:
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[r["calibration"]]
                x = data.take("calib", 0, r["samples"])
                # U8 activations with S8 weights: onnxruntime's recommendation for x86 CPUs.
                quantize_static(str(src), str(dst), _Calibration(x, _input_names(src)),
                                quant_format=QuantFormat.QDQ, per_channel=r["per_channel"],
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=method, op_types_to_quantize=ops,
                                nodes_to_exclude=exclude, extra_options=extra)
            return extra
        except Exception as err:  # noqa: BLE001 - the library's own errors, named below
            fix = next((opt for fn, opt in KNOWN_FAILURES.items() if fn in _failed_in(err)), None)
            if attempt == 0 and fix and not extra.get(fix):
                extra = {**extra, fix: True}
                continue
            raise library_error(step, err) from err
    raise AssertionError("unreachable")  # pragma: no cover


def _run_all(path: Path, feeds: list[dict[str, np.ndarray]], names: list[str] | None = None
             ) -> list[dict[str, np.ndarray]]:
    """Run ``path`` on each feed; with ``names``, those intermediate tensors are outputs too."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if names:  # tensors some node of this model computes (weights are renamed by quantizing)
        made = {t for n in model.graph.node for t in n.output} - {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n in made)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(None, f))) for f in feeds]


def _disagreement(ref: list[dict], got: list[dict], output: str) -> float:
    """Points of calibration samples whose top-1 differs from fp32's."""
    return float(np.mean([np.argmax(a[output]) != np.argmax(b[output]) for a, b in zip(ref, got)]) * 100.0)


def _sensitivity(fp32: Path, quant: Path, feeds: list[dict], candidates: dict[str, Any]
                 ) -> dict[str, float]:
    """Per candidate node: the relative output error (vs fp32, on the calibration split) it
    adds to the largest error of its inputs."""
    tensors = sorted({t for n in candidates.values() for t in (*n.input, n.output[0]) if t})
    ref, got = _run_all(fp32, feeds, tensors), _run_all(quant, feeds, tensors)

    def err(t: str) -> float:
        if t not in ref[0] or t not in got[0] or not np.issubdtype(ref[0][t].dtype, np.floating):
            return 0.0
        # in float64: a float32 activation squared overflows (the transformer's did), giving inf/inf
        num = sum(float(np.sum(np.square(a[t] - b[t], dtype=np.float64))) for a, b in zip(ref, got))
        den = sum(float(np.sum(np.square(a[t], dtype=np.float64))) for a in ref)
        return (num / den) ** 0.5 if den > 0 and np.isfinite(den) else 0.0

    return {name: err(n.output[0]) - max([err(t) for t in n.input if t] or [0.0])
            for name, n in candidates.items()}


def _used_names(node) -> set[str]:
    """The tensors ``node`` reads, with those its subgraphs (If/Loop/Scan bodies) read."""
    names = set(node.input)
    for a in node.attribute:
        for g in [a.g] if a.HasField("g") else list(a.graphs):
            for n in g.node:
                names |= _used_names(n)
    return names


def _scored_subgraph(src: Path, dst: Path) -> str:
    """Write to ``dst`` only what the scored output (the model's first, and in the model cache
    its only, output: ``workbench.models.user`` keeps the one the experiment's ``output:``
    chose) is computed from, and return that output's name. A model cut down to one of its
    outputs still holds the other outputs' nodes and weights: the quantizer would calibrate and
    quantize them, the fallback would spend its rounds keeping them in float, and the
    artifact's size would count them, while none of them changes the scored output."""
    import onnx

    model = onnx.load(str(src))
    graph, output = model.graph, model.graph.output[0].name
    made_by = {t: i for i, n in enumerate(graph.node) for t in n.output}
    needed, todo, keep = set(), [output], set()
    while todo:
        t = todo.pop()
        if t in needed:
            continue
        needed.add(t)
        if t in made_by and made_by[t] not in keep:
            keep.add(made_by[t])
            todo += [u for u in _used_names(graph.node[made_by[t]]) if u]
    nodes = [n for i, n in enumerate(graph.node) if i in keep]
    weights = [w for w in graph.initializer if w.name in needed]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(weights)
    onnx.save(model, str(dst))
    return output


def _int8(src: Path, dst: Path, r: dict[str, Any], data: Dataset) -> None:
    """int8 with the accuracy-aware fallback, scored on the scored output; writes
    :data:`RECORD_FILE` beside ``dst``."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        output = _scored_subgraph(src, Path(tmp) / "scored.onnx")
        fp32 = _prepared(Path(tmp) / "scored.onnx", Path(tmp)) if r["mode"] == "static" else Path(tmp) / "scored.onnx"
        names = _input_names(fp32)
        x = inputs.cast_float32(data.take("calib", 0, r["samples"]))
        feeds = [dict(zip(names, inputs.by_runtime_names(inputs.take(x, i, i + 1), names)))
                 for i in range(inputs.rows(x))]
        graph = onnx.load(str(fp32)).graph
        ops = set(COMPUTE_OPS) if r.get("ops") == "compute" else None
        candidates = {n.name: n for n in graph.node if n.name and (ops is None or n.op_type in ops)}
        rec: dict[str, Any] = {"ops": r.get("ops", "all"), "output": output, "float_nodes": [], "rounds": []}
        extra: dict[str, Any] = {}
        ref = _run_all(fp32, feeds) if r.get("fallback_budget") is not None else None
        for rnd in range(FALLBACK_ROUNDS + 1):
            exclude = [f["node"] for f in rec["float_nodes"]]
            extra = _quantize(fp32, dst, r, data, exclude, extra)
            try:  # what the quantizer wrote must run (a workaround can leave a model it cannot)
                got = _run_all(dst, feeds if ref is not None else feeds[:1])
            except Exception as err:  # noqa: BLE001 - onnxruntime's error, named
                with_fix = f" with {', '.join(extra)}" if extra else ""
                raise library_error(f"quantize_{r['mode']}{with_fix} (the model it wrote cannot run)", err) from err
            if ref is None:
                break
            off = _disagreement(ref, got, output)
            rec["rounds"].append({"float_nodes": len(exclude), "calib_disagreement_pt": off})
            left = {k: v for k, v in candidates.items() if k not in exclude}
            if off <= r["fallback_budget"] or rnd == FALLBACK_ROUNDS or not left:
                break
            try:
                sens = _sensitivity(fp32, dst, feeds, left)
            except Exception as err:  # noqa: BLE001 - the QDQ graph cannot run unfused: greedy by op type
                rest = {k: n for k, n in left.items() if n.op_type not in COMPUTE_OPS}
                why = f"per-node error not measurable ({type(err).__name__}: {first_line(err, 120)})"
                if not rest:
                    rec["fallback_stopped"] = why
                    break
                rec["float_nodes"] += [{"node": k, "op": n.op_type, "why": (
                    f"round {rnd + 1}: top-1 off fp32 on {off:.1f}% of calibration samples (budget "
                    f"{r['fallback_budget']:g}); {why}: every op but MatMul/Gemm/Conv falls back")}
                    for k, n in rest.items()]
                continue
            worst = sorted(sens, key=sens.get, reverse=True)[:max(1, len(left) // 4)]
            rec["float_nodes"] += [{"node": k, "op": left[k].op_type, "why": (
                f"round {rnd + 1}: top-1 off fp32 on {off:.1f}% of calibration samples (budget "
                f"{r['fallback_budget']:g}); adds {sens[k]:.3g} relative output error")} for k in worst]
        rec["accuracy_budget_met"] = None if ref is None else rec["rounds"][-1]["calib_disagreement_pt"] <= r["fallback_budget"]
        if extra:
            import onnxruntime

            rec["workarounds"] = [f"{k}=True (onnxruntime {onnxruntime.__version__}: a known failure "
                                  "without it, retried once)" for k in extra]
    (dst.parent / RECORD_FILE).write_text(json.dumps(rec, indent=2))


class Quantize(Transform):
    """fp32 ONNX -> fp16 / int8 (static QDQ or dynamic) / int4 ONNX."""

    name = "quantize:onnx"
    parameters = (BITS, INT8_MODE, CALIBRATION, PER_CHANNEL, QUANT_OPS)

    def applies(self, state, params, formats) -> bool:
        return isinstance(state, Artifact) and state.format == "onnx" and params.bits != 32

    def apply(self, state, data, params, calibration_samples) -> Artifact:
        r = recipe(params, calibration_samples)
        k = cache.key("quantize", state.key, r, cache.versions(*ONNX_PACKAGES))
        d = cache.entry("artifacts", k, lambda out: apply(state.path, out / "model.onnx", r, data))
        done = record(d / "model.onnx")
        kept = f" ({len(done['float_nodes'])} nodes kept float)" if done and done["float_nodes"] else ""
        return Artifact(d / "model.onnx", "onnx", k, state.transforms + (describe(r) + kept,))


TRANSFORM = register(Quantize())
