"""Quantization of an fp32 ONNX model with onnxruntime's own tools.

- 16: fp16 weights and compute, fp32 inputs/outputs kept for the caller (no speed-up on CPU).
- 8 dynamic: weights int8, activations quantized at run time. On convolutions this becomes
  ConvInteger, which is often *slower* than fp32 on CPU; we build it and report it anyway.
- 8 static: QDQ, activations calibrated on the calibration split (MinMax / Entropy /
  Percentile), per-tensor or per-channel weights. This is the fast int8 path on CPU.
- 4: weight-only MatMulNBits (block-wise), only where the graph has MatMul/Gather.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from workbench import runtimes
from workbench.core import cache
from workbench.core.errors import TrialPruned
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


def recipe(params, calibration_samples: int) -> dict[str, Any]:
    """The parameters that determine the quantized artifact (and nothing else)."""
    if params.bits == 16:
        return {"bits": 16, "integer_inputs_kept": 1}  # recipe v2: index casts stay fp32
    if params.bits == 4:
        return {"bits": 4, "block_size": INT4_BLOCK_SIZE}
    if params.int8_mode == "dynamic":
        return {"bits": 8, "mode": "dynamic", "per_channel": params.per_channel}
    return {"bits": 8, "mode": "static", "per_channel": params.per_channel,
            "calibration": params.calibration, "samples": calibration_samples}


def describe(r: dict[str, Any]) -> str:
    if r["bits"] == 8:
        return f"int8-{r['mode']}" + ("-per-channel" if r["per_channel"] else "")
    return {16: "fp16", 4: "int4-weight-only"}[r["bits"]]


def apply(src: Path, dst: Path, r: dict[str, Any], data: Dataset) -> None:
    """Write the quantized version of ``src`` to ``dst``."""
    if r["bits"] == 16:
        _fp16(src, dst)
    elif r["bits"] == 4:
        _int4(src, dst, r["block_size"])
    elif r["mode"] == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=r["per_channel"])
    else:
        _static(src, dst, r, data)


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


def _static(src: Path, dst: Path, r: dict[str, Any], data: Dataset) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[r["calibration"]]
    x = data.take("calib", 0, r["samples"])
    graph = onnx.load(str(src)).graph
    weights = {t.name for t in graph.initializer}  # old exporters list weights as inputs too
    input_names = [i.name for i in graph.input if i.name not in weights]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        cwd = os.getcwd()
        try:  # shape inference + fusions, as ORT advises
            # in the temporary directory: when symbolic shape inference gives up (attention
            # masks, for example) onnxruntime dumps its partial model into the current directory
            os.chdir(tmp)
            quant_pre_process(str(src), str(prepared))
        except Exception:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        # U8 activations with S8 weights: onnxruntime's recommendation for x86 CPUs.
        quantize_static(str(prepared), str(dst), _Calibration(x, input_names),
                        quant_format=QuantFormat.QDQ, per_channel=r["per_channel"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method)


class Quantize(Transform):
    """fp32 ONNX -> fp16 / int8 (static QDQ or dynamic) / int4 ONNX."""

    name = "quantize:onnx"
    parameters = (BITS, INT8_MODE, CALIBRATION, PER_CHANNEL)

    def applies(self, state, params, formats) -> bool:
        return isinstance(state, Artifact) and state.format == "onnx" and params.bits != 32

    def apply(self, state, data, params, calibration_samples) -> Artifact:
        r = recipe(params, calibration_samples)
        k = cache.key("quantize", state.key, r, cache.versions(*ONNX_PACKAGES))
        d = cache.entry("artifacts", k, lambda out: apply(state.path, out / "model.onnx", r, data))
        return Artifact(d / "model.onnx", "onnx", k, state.transforms + (describe(r),))


TRANSFORM = register(Quantize())
