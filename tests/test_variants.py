"""Compression variants: each builds a valid artifact that loads, predicts and keeps accuracy."""

import numpy as np
import onnx
import pytest

from workbench import trial, variants
from workbench.config.params import TrialParams
from workbench.core.errors import TrialPruned
from workbench.variants import quantize

FAST = dict(warmup=2, min_runs=20, min_seconds=0.05, max_seconds=2.0)


def test_fp16_within_0_2_points_and_half_the_size():
    fp32 = trial.run(dict(bits=32, **FAST))
    fp16 = trial.run(dict(bits=16, **FAST))
    assert fp16["status"] == "complete"
    assert abs(fp16["accuracy"] - fp32["accuracy"]) <= 0.2
    assert fp16["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert fp16["max_abs_diff"] < 1e-2


@pytest.mark.parametrize("calibration,per_channel", [("minmax", True), ("entropy", False), ("percentile", False)])
def test_static_int8_calibrations_within_one_point(calibration, per_channel):
    m = trial.run(dict(bits=8, int8_mode="static", calibration=calibration, per_channel=per_channel,
                       calibration_samples=100, **FAST))
    assert m["status"] == "complete" and m["accuracy_drop"] <= 1.0
    assert "int8-static" in m["transforms"][-1]


def test_static_int8_graph_is_qdq(digits, digits_model):
    art = variants.build(digits_model, digits, TrialParams(bits=8, int8_mode="static"), 200)
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int4_applies_on_the_mlp():
    m = trial.run(dict(model="digits_mlp", bits=4, **FAST))
    assert m["status"] == "complete", m.get("reason")
    ops = {n.op_type for n in onnx.load(m["artifact"]).graph.node}
    assert "MatMulNBits" in ops
    assert m["accuracy_drop"] <= 1.0
    fp32 = trial.run(dict(model="digits_mlp", bits=32, **FAST))
    assert m["size_bytes"] < fp32["size_bytes"] / 4


def test_int4_on_a_convolutional_model_is_pruned_with_its_reason(tmp_path):
    import keras
    import tensorflow as tf
    import tf2onnx

    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                            keras.layers.Conv2D(32, 3, activation="relu"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: cnn(x), input_signature=spec),
                                             input_signature=spec, opset=17)
    src = tmp_path / "cnn.onnx"
    src.write_bytes(proto.SerializeToString())
    with pytest.raises(TrialPruned, match="no MatMul to quantize to 4 bits"):
        quantize.apply(src, tmp_path / "int4.onnx", {"bits": 4, "block_size": 32}, None)

    conv_only = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3)])
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: conv_only(x), input_signature=spec),
                                             input_signature=spec, opset=17)
    src.write_bytes(proto.SerializeToString())
    with pytest.raises(TrialPruned, match="^no MatMul to quantize to 4 bits$"):
        quantize.apply(src, tmp_path / "int4.onnx", {"bits": 4, "block_size": 32}, None)


def test_pruned_then_quantized_variant():
    m = trial.run(dict(sparsity=0.5, prune_structure="channels", finetune_epochs=1, bits=8, **FAST))
    assert m["status"] == "complete"
    assert m["transforms"] == ["prune:channels:0.5", "export:onnx", "int8-static"]
    assert m["params_removed_fraction"] >= 0.5


def test_unstructured_sparsity_reached_on_the_artifact():
    m = trial.run(dict(sparsity=0.7, finetune_epochs=1, **FAST))
    assert abs(m["sparsity_reached"] - 0.7) <= 0.01
    assert m["size_gzip_bytes"] < 0.7 * m["size_bytes"]  # zeros compress: the visible benefit


def test_tflite_full_int8_has_int8_tensors(digits, digits_model):
    from ai_edge_litert.interpreter import Interpreter

    art = variants.build(digits_model, digits, TrialParams(runtime="litert", bits=8), 200)
    assert art.format == "tflite"
    interp = Interpreter(model_path=str(art.path))
    dtypes = [t["dtype"] for t in interp.get_tensor_details()]
    assert sum(d == np.int8 for d in dtypes) > len(dtypes) / 2
    assert interp.get_input_details()[0]["dtype"] == np.int8


@pytest.mark.parametrize("bits,mode", [(32, "static"), (16, "static"), (8, "dynamic")])
def test_tflite_float_and_dynamic_variants_build(digits, digits_model, bits, mode):
    from ai_edge_litert.interpreter import Interpreter

    art = variants.build(digits_model, digits, TrialParams(runtime="litert", bits=bits, int8_mode=mode), 200)
    interp = Interpreter(model_path=str(art.path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], digits.x_eval[:1])
    interp.invoke()
    pred = interp.get_tensor(out["index"])
    assert pred.shape == (1, 10) and int(pred.argmax()) == int(digits_model.reference()[0].argmax())


def test_tflite_int4_is_pruned():
    m = trial.run(dict(runtime="litert", bits=4, **FAST))
    assert m["status"] == "pruned" and "4-bit" in m["reason"]
