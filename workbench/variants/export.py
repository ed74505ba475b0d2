"""Keras 3 -> ONNX export, checked against the Keras outputs.

tf2onnx converts a ``tf.function`` that calls the Keras model (Keras 3's own ``model.export``
goes through the same converter); the exported graph keeps a dynamic batch dimension. The
export is only accepted when onnxruntime reproduces the Keras eval outputs within
``TOLERANCE``: a silently wrong conversion would make every later number meaningless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.data import Dataset
from workbench.errors import ModelError
from workbench.zoo import ModelRef

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "input"


def to_onnx(model: ModelRef, data: Dataset, out: Path) -> None:
    """Export ``model`` to ``out`` and verify output equivalence on the eval split."""
    import tensorflow as tf
    import tf2onnx

    keras_model = model.load_keras()
    spec = (tf.TensorSpec((None, *data.input_shape), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def serve(x):
        return keras_model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    out.write_bytes(proto.SerializeToString())
    diff = max_abs_diff_vs_reference(out, model, data)
    if diff > TOLERANCE:
        raise ModelError(f"ONNX export of {model.name!r} differs from Keras by {diff:.2e} "
                         f"(> {TOLERANCE:g}); refusing to use it")


def max_abs_diff_vs_reference(path: Path, model: ModelRef, data: Dataset) -> float:
    """Largest |ONNX - Keras| over the eval split, the outputs run through onnxruntime fp32."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {sess.get_inputs()[0].name: data.x_eval.astype(np.float32)})[0]
    return float(np.max(np.abs(outputs - model.reference())))
