"""Keras -> SavedModel -> TFLite, with the TFLite converter's own quantization.

- 32: fp32. 16: fp16 weights (dequantized to fp32 at load by the runtime).
- 8 dynamic: dynamic-range int8 (int8 weights, float activations).
- 8 static: full int8, activations calibrated with a representative dataset drawn from the
  calibration split; int8 input and output tensors for float inputs (the runtime session
  quantizes the float batch with the input's scale and zero point, so callers pass float32);
  integer inputs (token ids, masks) stay integer. Several inputs are calibrated by name.
- 4: not offered by the TFLite converter: the trial is pruned with that reason.

Which ops int8 touches is, on this route, the converter's choice of mode: full int8 quantizes
every op; dynamic-range quantizes only the weights of the compute ops (FULLY_CONNECTED, CONV_2D,
DEPTHWISE_CONV_2D, BATCH_MATMUL, above the converter's minimum size) and keeps every activation
float, the TFLite counterpart of ``quant_ops=compute``. ``quant_ops`` and the accuracy-aware
fallback (``workbench.variants.quantize``) do not apply here: the converter's stable API
(``optimizations``, ``representative_dataset``, ``target_spec.supported_ops`` /
``supported_types``, ``inference_input_type`` / ``inference_output_type``) has no per-op or
per-node choice. The only one, ``tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=,
denylisted_nodes=)`` with ``QuantizationDebugger.get_nondebug_quantized_model()``, is outside
TensorFlow's compatibility guarantee (its versions guide excludes every symbol whose name holds
"experimental"), as is the 16x8 mode (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``).

Converted from a SavedModel export (``model.export``), the route LiteRT documents for Keras 3.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from workbench.core import cache
from workbench.core.errors import TrialPruned, first_line
from workbench.data import Dataset, inputs
from workbench.models import ModelRef
from workbench.variants import Artifact, Transform, register
from workbench.variants.quantize import BITS, INT8_MODE

TFLITE_PACKAGES = ("tensorflow", "keras", "ai-edge-litert")


def recipe(params, calibration_samples: int) -> dict[str, Any]:
    if params.bits == 4:
        raise TrialPruned("the TFLite converter has no 4-bit weight quantization")
    if params.bits == 8 and params.int8_mode == "static":
        return {"bits": 8, "mode": "full-int8", "samples": calibration_samples}
    if params.bits == 8:
        return {"bits": 8, "mode": "dynamic-range"}
    return {"bits": params.bits}


def describe(r: dict[str, Any]) -> str:
    return "tflite-" + (f"int8-{r['mode']}" if r["bits"] == 8 else f"fp{r['bits']}")


def convert(model: ModelRef, data: Dataset, out: Path, r: dict[str, Any]) -> None:
    """Write the TFLite flatbuffer for ``model`` quantized as ``r`` to ``out``."""
    import tensorflow as tf

    keras_model = model.load_keras()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        keras_model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if r["bits"] == 16:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif r["bits"] == 8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if r["mode"] == "full-int8":
                converter.representative_dataset = _representative(data, r["samples"])
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                # float inputs become int8; integer inputs (token ids, masks) stay integer
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        try:
            flatbuffer = converter.convert()
        except Exception as err:  # an op without an (int8) TFLite kernel, for example
            text = str(err).strip()
            line = next((ln for ln in text.splitlines() if "error" in ln.lower()),
                        first_line(err))
            raise TrialPruned(f"the TFLite converter refused this model ({describe(r)}): {line[:200]}") from None
        out.write_bytes(flatbuffer)


def _representative(data: Dataset, samples: int):
    """Calibration samples one at a time: a list for one input, a dict by input name (the
    SavedModel signature's names, which are the Keras input names) for several."""
    x = inputs.cast_float32(data.take("calib", 0, samples))

    def gen():
        for i in range(inputs.rows(x)):
            one = inputs.take(x, i, i + 1)
            yield one if isinstance(one, dict) else [one]

    return gen


class TFLite(Transform):
    """Keras -> SavedModel -> ``.tflite``, quantized by the converter, for runtimes reading TFLite."""

    name = "tflite"
    parameters = (BITS, INT8_MODE)

    def applies(self, state, params, formats) -> bool:
        return isinstance(state, ModelRef) and "tflite" in formats

    def apply(self, state, data, params, calibration_samples) -> Artifact:
        if state.format != "keras":
            raise TrialPruned(f"the TFLite route needs a Keras model; {state.name} is {state.format}")
        r = recipe(params, calibration_samples)
        k = cache.key("tflite", state.key, r, cache.versions(*TFLITE_PACKAGES))
        d = cache.entry("artifacts", k, lambda out: convert(state, data, out / "model.tflite", r))
        prefix = tuple(state.meta.get("transforms", ()))
        return Artifact(d / "model.tflite", "tflite", k, prefix + ("export:savedmodel", describe(r)))


TRANSFORM = register(TFLite())
