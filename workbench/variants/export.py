"""Keras 3 / SavedModel -> ONNX export, checked against the fp32 outputs.

tf2onnx converts a ``tf.function`` that calls the Keras model, or the SavedModel's
``serving_default`` signature (Keras 3's own ``model.export`` goes through the same converter);
the exported graph keeps a dynamic batch dimension, one ONNX input per model input (named as the
Keras/SavedModel input; a single input is named ``input``) with its own dtype. The
export is only accepted when onnxruntime reproduces the Keras eval outputs within
``TOLERANCE``: a silently wrong conversion would make every later number meaningless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.core.errors import ModelError, first_line
from workbench.data import Dataset
from workbench.data.inputs import by_runtime_names
from workbench.models import ModelRef
from workbench.models.user import saved_model_signature

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "input"


def _input_specs(model: ModelRef):
    """One ``tf.TensorSpec`` per model input, dynamic batch, named after the input (a single
    input keeps the name ``input``), with the input's own dtype: integer inputs stay integer."""
    import tensorflow as tf

    inputs = model.inputs
    return tuple(tf.TensorSpec((None, *i["shape"]), tf.as_dtype(i["dtype"]),
                               name=i["name"] if len(inputs) > 1 else INPUT_NAME) for i in inputs)


def _serving_function(model: ModelRef, data: Dataset):
    """A ``tf.function`` with a dynamic batch signature computing the fp32 model's outputs."""
    import tensorflow as tf

    spec = _input_specs(model)
    names = [i["name"] for i in model.inputs]
    if model.format == "savedmodel":

        loaded, sig, _, out_name = saved_model_signature(model.saved_model_path,
                                                         model.meta.get("signature_output", 0))

        @tf.function(input_signature=spec)
        def serve(*xs):
            return sig(**dict(zip(names, xs)))[out_name]

        serve._keep_alive = loaded  # the signature's variables live as long as the function
        return serve, spec
    keras_model = model.load_keras()

    @tf.function(input_signature=spec)
    def serve(*xs):
        return keras_model(dict(zip(names, xs)) if len(xs) > 1 else xs[0], training=False)

    return serve, spec


def to_onnx(model: ModelRef, data: Dataset, out: Path) -> None:
    """Export ``model`` (Keras or SavedModel) to ``out`` and verify output equivalence on the
    eval split. An ONNX user model needs no export: it is its own fp32 artifact."""
    import tf2onnx

    if model.format == "onnx":
        raise ModelError(f"{model.name} is already an ONNX model; it is used as is")
    serve, spec = _serving_function(model, data)
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    except Exception as err:  # an op tf2onnx cannot convert, for example
        line = first_line(err, 200)
        raise ModelError(f"ONNX export of {model.name!r} failed ({line})") from None
    out.write_bytes(proto.SerializeToString())
    try:
        diff = max_abs_diff_vs_reference(out, model, data)
    except Exception as err:  # an op onnxruntime has no kernel for at this opset, for example
        line = first_line(err, 200)
        raise ModelError(f"ONNX export of {model.name!r} does not run in onnxruntime ({line})") from None
    if diff > TOLERANCE:
        raise ModelError(f"ONNX export of {model.name!r} differs from Keras by {diff:.2e} "
                         f"(> {TOLERANCE:g}); refusing to use it")


def max_abs_diff_vs_reference(path: Path, model: ModelRef, data: Dataset) -> float:
    """Largest |ONNX - Keras| over the eval split, the outputs run through onnxruntime fp32."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outputs = sess.run(None, dict(zip(names, by_runtime_names(data.x_eval, names))))[0]
    return float(np.max(np.abs(outputs - model.reference())))
