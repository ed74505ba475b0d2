"""Every runtime runs the builtin model and agrees with Keras within 1e-4; unavailable devices
and providers prune the trial with the reason; session options are really applied.

LiteRT is tested on an fp32 (and a full-int8) ``.tflite`` converted here from the builtin Keras
model with TensorFlow's converter; only the runtime under test is ``ai_edge_litert``."""

from pathlib import Path

import numpy as np
import pytest

from workbench import runtimes, trial
from workbench.config.params import TrialParams
from workbench.core import cache
from workbench.measure import artifact as artifact_mod
from workbench.runtimes import litert as litert_rt
from workbench.runtimes import openvino as openvino_rt
from workbench.runtimes import ort as ort_rt
from workbench.variants import Artifact

FAST = dict(warmup=2, min_runs=20, min_seconds=0.05, max_seconds=2.0)
TOLERANCE = 1e-4


def convert_tflite(model, data, out: Path, int8: bool = False) -> Path:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model.load_keras())
    if int8:
        calib = data.x_calib.astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())
    return out


@pytest.fixture(scope="module")
def tflite_fp32(digits_model, digits, tmp_path_factory) -> Artifact:
    path = convert_tflite(digits_model, digits, tmp_path_factory.mktemp("tfl") / "model.tflite")
    return Artifact(path, "tflite", cache.key("test-tflite", digits_model.key), ("export:tflite",))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tensorflow", "litert"])
@pytest.mark.parametrize("batch_size", [1, 32])
def test_runtime_agrees_with_keras(runtime, batch_size):
    m = trial.run(dict(runtime=runtime, batch_size=batch_size, **FAST))
    assert m["status"] == "complete", m.get("reason")
    assert m["max_abs_diff"] <= TOLERANCE and m["top1_agreement"] == 100.0
    assert m["accuracy_drop"] == pytest.approx(0.0, abs=1e-9)


def _run_session(params: TrialParams, artifact: Artifact, x: np.ndarray) -> tuple[np.ndarray, object]:
    session = runtimes.load(params, artifact)
    try:
        return artifact_mod.evaluate(session, x, params.batch_size), session
    finally:
        session.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_litert_fp32_agrees_with_keras(tflite_fp32, digits, digits_model, threads):
    # batch 32 over 360 samples: the last batch has 8, so the input is resized again
    out, session = _run_session(TrialParams(runtime="litert", provider="xnnpack", batch_size=32,
                                            threads=threads), tflite_fp32, digits.x_eval)
    assert session.providers == ["litert:xnnpack"] and out.dtype == np.float32
    assert float(np.max(np.abs(out - digits_model.reference()))) <= TOLERANCE


@pytest.mark.slow
def test_litert_int8_model_takes_and_returns_float(digits, digits_model, tmp_path):
    path = convert_tflite(digits_model, digits, tmp_path / "int8.tflite", int8=True)
    art = Artifact(path, "tflite", "int8-test", ("export:tflite", "int8"))
    out, _ = _run_session(TrialParams(runtime="litert", batch_size=16), art, digits.x_eval)
    assert out.dtype == np.float32 and abs(out.sum(axis=1).mean() - 1.0) < 0.05  # softmax, dequantized
    acc = float(np.mean(out.argmax(-1) == digits.y_eval) * 100)
    assert acc >= digits_model.accuracy - 2.0


def test_litert_refuses_other_providers_and_formats(tflite_fp32, digits_model):
    m = trial.run(dict(runtime="litert", provider="CUDAExecutionProvider", **FAST))
    assert m["status"] == "pruned"
    with pytest.raises(Exception, match="not supported"):
        runtimes.load(TrialParams(runtime="litert", provider="GPU"), tflite_fp32)


def test_cuda_is_pruned_with_reason_in_onnxruntime():
    m = trial.run(dict(runtime="onnxruntime", provider="CUDAExecutionProvider", **FAST))
    assert m["status"] == "pruned"
    assert "CUDAExecutionProvider is not available" in m["reason"]
    assert "CPUExecutionProvider" in m["reason"]  # says what is available


@pytest.mark.parametrize("provider", ["GPU", "NPU"])
def test_gpu_device_is_pruned_with_reason_in_openvino(provider):
    m = trial.run(dict(runtime="openvino", provider=provider, **FAST))
    assert m["status"] == "pruned"
    assert "is not available" in m["reason"] and "CPU" in m["reason"]


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "OpenVINOExecutionProvider"])
def test_onnxruntime_provider_names_are_not_openvino_devices(provider):
    # CUDA is an NVIDIA GPU, not OpenVINO's Intel GPU: never translated, pruned with the reason
    m = trial.run(dict(runtime="openvino", provider=provider, **FAST))
    assert m["status"] == "pruned"
    assert f"{provider} is not an OpenVINO device" in m["reason"] and "CPU, GPU, NPU" in m["reason"]
    assert openvino_rt.device_for("CPUExecutionProvider") == "CPU"


def test_litert_checks_that_xnnpack_is_applied(tflite_fp32):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    session = runtimes.load(TrialParams(runtime="litert", provider="xnnpack"), tflite_fp32)
    assert session.options["delegate_nodes"] >= 1 and session.options["num_threads"] == 1
    session.close()
    # the same model without the default delegates has no DELEGATE node: what the check sees
    plain = Interpreter(model_path=str(tflite_fp32.path),
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    assert litert_rt.delegated_ops(plain)[0] == 0


def test_tensorflow_threads_that_cannot_be_applied_prune_the_trial():
    # this process's TensorFlow pools are fixed once it ran (1 thread here, see conftest):
    # a second thread count cannot be applied and must not be measured as if it were
    first = trial.run(dict(runtime="tensorflow", threads=1, **FAST))
    assert first["status"] == "complete", first.get("reason")
    m = trial.run(dict(runtime="tensorflow", threads=2, **FAST))
    assert m["status"] == "pruned" and "cannot set 2 intra-op" in m["reason"]


def test_tensorflow_refuses_a_gpu_provider():
    m = trial.run(dict(runtime="tensorflow", provider="CUDAExecutionProvider", **FAST))
    assert m["status"] == "pruned" and "CUDAExecutionProvider" in m["reason"]


@pytest.mark.parametrize("level,mode,inter", [("disabled", "sequential", 1), ("basic", "parallel", 2),
                                              ("extended", "parallel", 1)])
def test_ort_session_options_are_applied_and_agree(level, mode, inter):
    import onnxruntime as ort

    p = TrialParams(graph_optimization=level, execution_mode=mode, inter_op_threads=inter, threads=2)
    opts = ort_rt.session_options(p)
    assert opts.graph_optimization_level == getattr(ort.GraphOptimizationLevel,
                                                    ort_rt.GRAPH_OPTIMIZATION[level])
    assert opts.execution_mode == getattr(ort.ExecutionMode, ort_rt.EXECUTION_MODE[mode])
    assert opts.inter_op_num_threads == inter and opts.intra_op_num_threads == 2
    m = trial.run(dict(graph_optimization=level, execution_mode=mode, inter_op_threads=inter, **FAST))
    assert m["status"] == "complete" and m["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("hint,streams", [("LATENCY", 0), ("THROUGHPUT", 0), ("THROUGHPUT", 2)])
def test_openvino_hint_and_streams_are_applied(digits, digits_model, hint, streams):
    from workbench import variants

    p = TrialParams(runtime="openvino", ov_hint=hint, ov_streams=streams, threads=2, batch_size=8)
    art = variants.build(digits_model, digits, p, 200)
    out, session = _run_session(p, art, digits.x_eval)
    assert session.options["PERFORMANCE_HINT"] == hint
    if streams:
        assert session.options["NUM_STREAMS"] == str(streams)
    elif hint == "LATENCY":
        assert session.options["NUM_STREAMS"] == "1"
    assert float(np.max(np.abs(out - digits_model.reference()))) <= TOLERANCE


def test_openvino_fp16_computes_in_the_devices_16_bit_precision(digits, digits_model):
    """fp16 on OpenVINO is the device's own 16-bit compute (f16, else bf16 where the CPU has
    AVX512-BF16/AMX), not the fp16 model upcast to f32; fp32 stays f32. Accuracy is what the
    trial measures: here the answers still agree with fp32's."""
    import openvino as ov

    from workbench import variants

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    native = "f16" if "FP16" in caps else "bf16" if "BF16" in caps else "f32"
    hints = {}
    for bits in (32, 16):
        p = TrialParams(runtime="openvino", bits=bits)
        out, session = _run_session(p, variants.build(digits_model, digits, p, 200), digits.x_eval)
        hints[bits] = session.options["INFERENCE_PRECISION_HINT"]
        agree = float(np.mean(out.argmax(-1) == digits_model.reference().argmax(-1)))
        assert agree >= 0.97, (bits, agree)
    assert hints == {32: str(ov.Type.f32), 16: str(getattr(ov.Type, native))}  # what OpenVINO chose
