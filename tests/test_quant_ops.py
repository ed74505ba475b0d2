"""Accuracy-aware int8 (issue 19) on tiny ONNX models built here with onnx.helper: which ops
are quantized, the fallback of the nodes that cost accuracy, and a known onnxruntime failure
retried once with its documented workaround. Real onnxruntime quantizer, real trials."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.config.params import TrialParams
from workbench.core.errors import TrialPruned
from workbench.trial import local
from workbench.variants import quantize

QUICK = dict(warmup=1, min_runs=5, min_seconds=0.05, max_seconds=1.0)


def _save(path, nodes, weights, n_in, classes, x, y):
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    data = path.with_suffix(".npz")
    np.savez(data, x_eval=x[:400], y_eval=y[:400], x_calib=x[400:])
    return str(path), str(data)


@pytest.fixture(scope="module")
def wide_range(tmp_path_factory):
    """MatMul -> Mul by [1e4, 1, 1, ...] -> Div by the same -> MatMul. In float the Mul/Div
    pair is the identity; per-tensor int8 of its wide-range output (one column 1e4 times the
    others, as a LayerNorm's variance or an un-normalised feature can be) rounds every other
    column to zero. Labels: the class the float model's own weights define on random inputs
    (the task is the model's function; the test asks how well int8 keeps it)."""
    rng = np.random.default_rng(0)
    n_in, hidden, classes = 16, 32, 10
    w1 = rng.normal(size=(n_in, hidden)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, classes)) / 4).astype(np.float32)
    widen = np.ones(hidden, np.float32)
    widen[0] = 1e4
    x = rng.normal(size=(600, n_in)).astype(np.float32)
    y = ((x @ w1) @ w2).argmax(-1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
             helper.make_node("Mul", ["h", "widen"], ["z"], name="widen"),
             helper.make_node("Div", ["z", "widen"], ["y"], name="narrow"),
             helper.make_node("MatMul", ["y", "w2"], ["logits"], name="head")]
    return _save(tmp_path_factory.mktemp("wide") / "wide.onnx", nodes,
                 {"w1": w1, "w2": w2, "widen": widen}, n_in, classes, x, y)


def _trial(model, data, **params):
    return local.run(dict(model=model, data=data, bits=8, **QUICK, **params))


def test_all_ops_int8_collapses_where_compute_ops_only_holds(wide_range):
    model, data = wide_range
    # without a budget to defend (a drop of 100 points is allowed) nothing falls back:
    # this is plain per-tensor int8 of every op, and it collapses
    everything = _trial(model, data, quant_ops="all", max_accuracy_drop=100.0)
    compute = _trial(model, data, quant_ops="compute", max_accuracy_drop=100.0)
    assert everything["accuracy_drop"] > 50
    assert compute["accuracy_drop"] < 3
    assert quantize.record(everything["artifact"])["float_nodes"] == []
    assert compute["label"].startswith("onnxruntime int8-static-mm")
    assert compute["artifact"] != everything["artifact"]


def test_fallback_keeps_the_nodes_that_cost_accuracy_in_float(wide_range):
    model, data = wide_range
    m = _trial(model, data, quant_ops="all", max_accuracy_drop=2.0)
    rec = quantize.record(m["artifact"])
    kept = [f["node"] for f in rec["float_nodes"]]
    # the op whose int8 output broke accuracy is found first, by its added output error
    assert kept[0] == "widen"
    assert len(rec["rounds"]) <= quantize.FALLBACK_ROUNDS + 1
    assert rec["rounds"][0]["calib_disagreement_pt"] > 50 >= rec["rounds"][-1]["calib_disagreement_pt"]
    assert m["feasible"] and m["accuracy_drop"] <= 2.0
    assert "widen (Mul): round 1" in m["float_nodes"]
    # and the table carries it, for the report
    from workbench.results.table import make_row

    assert make_row("trial", "0", "COMPLETE", {}, m)["float_nodes"] == m["float_nodes"]


def test_dynamic_int8_takes_the_op_choice_too(wide_range):
    model, data = wide_range
    m = _trial(model, data, int8_mode="dynamic", quant_ops="compute")
    assert m["status"] == "complete" and "int8-dynamic-compute-ops" in m["transforms"][-1]


def test_quant_ops_applies_to_onnx_int8_only():
    assert TrialParams(bits=8, quant_ops="compute", runtime="openvino").quant_ops == "compute"
    from workbench.config import parameters

    assert parameters.applies("quant_ops", {"bits": 8, "runtime": "openvino"})
    assert not parameters.applies("quant_ops", {"bits": 8, "runtime": "litert"})
    assert not parameters.applies("quant_ops", {"bits": 16, "runtime": "onnxruntime"})


@pytest.fixture(scope="module")
def gemm_2d_bias(tmp_path_factory):
    """One Gemm whose bias is 2-D ([1, N], as some exporters write it): onnxruntime's per-channel
    static quantization raises in _adjust_weight_scale_for_int32_bias ("The truth value of an
    array with more than one element is ambiguous")."""
    rng = np.random.default_rng(1)
    n_in, classes = 16, 10
    w = rng.normal(size=(n_in, classes)).astype(np.float32)
    c = rng.normal(size=(1, classes)).astype(np.float32)
    x = rng.normal(size=(500, n_in)).astype(np.float32)
    y = (x @ w + c).argmax(-1)
    return _save(tmp_path_factory.mktemp("gemm") / "gemm.onnx",
                 [helper.make_node("Gemm", ["x", "w", "c"], ["logits"], name="dense")],
                 {"w": w, "c": c}, n_in, classes, x, y)


def test_a_known_library_failure_is_retried_once_with_its_workaround(gemm_2d_bias):
    model, data = gemm_2d_bias
    m = _trial(model, data, per_channel=True, max_accuracy_drop=5.0)
    rec = quantize.record(m["artifact"])
    assert m["status"] == "complete"
    assert len(rec["workarounds"]) == 1
    assert rec["workarounds"][0].startswith(f"QDQDisableWeightAdjustForInt32Bias=True (onnxruntime "
                                            f"{onnxruntime.__version__}")
    # per-tensor weights never needed it
    assert "workarounds" not in quantize.record(_trial(model, data, per_channel=False)["artifact"])


def test_a_quantizer_failure_names_the_library_and_its_version(tmp_path, gemm_2d_bias):
    # A model file cut in half: onnxruntime's quantizer raises, and the error says which
    # library, which version and which step (what a failed trial's reason shows)
    model, data = gemm_2d_bias
    src = tmp_path / "cut.onnx"
    whole = open(model, "rb").read()
    src.write_bytes(whole[:len(whole) // 2])
    from workbench import data as data_mod

    r = quantize.recipe(TrialParams(bits=8, int8_mode="dynamic"), 50)
    # the configuration cannot be built here: pruned with that reason (not a failed trial)
    with pytest.raises(TrialPruned, match=rf"^onnxruntime {onnxruntime.__version__} quantize_dynamic failed: "):
        quantize._quantize(src, tmp_path / "q.onnx", r, data_mod.load(data), [], {})


def test_the_report_shows_which_nodes_stayed_float():
    from workbench.report.summary import summary_items

    kept = "widen (Mul): round 1: top-1 off fp32 on 92.5% of calibration samples (budget 1)"
    best = {"trial": "3", "label": "onnxruntime int8-static b1 t1", "reason": "best", "question": "q",
            "row": {"float_nodes": kept}}
    head = {"accuracy": 97.5, "accuracy_drop": [0.5, 0.1, 0.9], "latency_p50_ms": [1.0, 0.9, 1.1], "batch_size": 1}
    assert ("kept in float", kept) in summary_items(head, best)


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    """Two outputs over one trunk: ``aux`` (first) and ``logits`` (second, the one the experiment
    scores). Each branch has a wide-range Mul/Div pair that per-tensor int8 breaks, the unscored
    branch's wider (so its nodes add the most output error of all). Labels: the float model's
    own class on ``logits``."""
    rng = np.random.default_rng(2)
    n_in, hidden, classes = 16, 32, 10
    w1 = rng.normal(size=(n_in, hidden)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, classes)) / 4).astype(np.float32)
    w3 = (rng.normal(size=(hidden, classes)) / 4).astype(np.float32)
    widen, widen_aux = np.ones(hidden, np.float32), np.ones(hidden, np.float32)
    widen[0], widen_aux[0] = 1e4, 1e5
    x = rng.normal(size=(600, n_in)).astype(np.float32)
    y = ((x @ w1) @ w2).argmax(-1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
             helper.make_node("Mul", ["h", "widen_aux"], ["za"], name="widen_aux"),
             helper.make_node("Div", ["za", "widen_aux"], ["ya"], name="narrow_aux"),
             helper.make_node("MatMul", ["ya", "w3"], ["aux"], name="aux_head"),
             helper.make_node("Mul", ["h", "widen"], ["z"], name="widen"),
             helper.make_node("Div", ["z", "widen"], ["y"], name="narrow"),
             helper.make_node("MatMul", ["y", "w2"], ["logits"], name="head")]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", classes]) for n in ("aux", "logits")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
                              out, [numpy_helper.from_array(w, name) for name, w in
                                    {"w1": w1, "w2": w2, "w3": w3, "widen": widen, "widen_aux": widen_aux}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    onnx.save(model, str(path))
    data = path.with_suffix(".npz")
    np.savez(data, x_eval=x[:400], y_eval=y[:400], x_calib=x[400:])
    return str(path), str(data)


def test_the_fallback_scores_the_chosen_output(two_outputs):
    model, data = two_outputs
    m = _trial(model, data, output="logits", quant_ops="all", max_accuracy_drop=2.0)
    rec = quantize.record(m["artifact"])
    kept = [f["node"] for f in rec["float_nodes"]]
    # the scored output's wide-range op is kept in float; nothing of the unscored branch is a
    # candidate (it does not reach the output the accuracy is measured on), and none of it is
    # quantized or counted in the artifact
    assert "widen" in kept
    assert not {"widen_aux", "narrow_aux", "aux_head"} & set(kept)
    assert rec["output"] == "logits"
    graph = onnx.load(m["artifact"]).graph
    assert {"dense1", "widen", "head"} <= {n.name for n in graph.node}
    assert not {"widen_aux", "narrow_aux", "aux_head"} & {n.name for n in graph.node}
    assert not {"w3", "w3_quantized"} & {w.name for w in graph.initializer}
    assert rec["rounds"][0]["calib_disagreement_pt"] > 50 >= rec["rounds"][-1]["calib_disagreement_pt"]
    assert rec["accuracy_budget_met"] and m["accuracy_drop"] < 10  # from a collapse to a few points


def test_on_the_tflite_route_the_op_choice_is_the_converters_int8_mode(digits, digits_model):
    """The TFLite converter's stable API has no per-op choice: quant_ops does not apply there
    (the same artifact, and a label that does not claim it); what the converter offers is the
    mode: dynamic-range int8 quantizes only the weights of the compute ops and keeps every
    activation float, full int8 quantizes the activations too."""
    from ai_edge_litert.interpreter import Interpreter

    from workbench import variants

    def build(**kw):
        art = variants.build(digits_model, digits, TrialParams(runtime="litert", bits=8, **kw), 200)
        # activations have the batch dimension (1) first; weights [out, ...] do not
        details = Interpreter(model_path=str(art.path)).get_tensor_details()
        acts = {np.dtype(t["dtype"]) for t in details if len(t["shape"]) >= 2 and t["shape"][0] == 1}
        weights = {np.dtype(t["dtype"]) for t in details if len(t["shape"]) >= 2 and t["shape"][0] != 1}
        return art, acts, weights

    full, full_acts, _ = build(int8_mode="static")
    assert build(int8_mode="static", quant_ops="compute")[0].path == full.path
    assert TrialParams(runtime="litert", bits=8, quant_ops="compute", per_channel=True).describe() == \
        "litert int8-static b1 t1"
    assert TrialParams(runtime="onnxruntime", bits=8, quant_ops="compute", per_channel=True).describe() == \
        "onnxruntime int8-static-pc-mm b1 t1"
    _, dyn_acts, dyn_weights = build(int8_mode="dynamic")
    assert dyn_acts == {np.dtype(np.float32)} and np.dtype(np.int8) in dyn_weights
    assert np.dtype(np.int8) in full_acts and np.dtype(np.float32) not in full_acts
