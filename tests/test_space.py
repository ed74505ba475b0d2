"""The automatic search space, conditional parameters, default n_trials and `workbench plan`."""

import pytest
from conftest import run_cli

from workbench import config
from workbench.sweep import space
from workbench.sweep import space as space_mod

KERAS_DENSE = {"format": "keras", "share": 0.9, "trainable": True}
KERAS_CONV = {"format": "keras", "share": 0.1, "trainable": True}
ONNX_MODEL = {"format": "onnx", "share": 0.9, "trainable": False}


def _values(spec):
    return spec if isinstance(spec, list) else [spec]


def test_auto_space_follows_the_model():
    exp = config.parse({"name": "x"})
    dense = space.auto(exp, KERAS_DENSE)
    assert _values(dense.bits) == [32, 16, 8, 4] and _values(dense.int8_mode) == ["static", "dynamic"]
    assert _values(dense.per_channel) == [False, True]
    assert _values(dense.sparsity) == space.PRUNE_SPARSITIES and dense.prune_structure == "channels"
    assert _values(dense.threads) == list(range(1, space.cores() + 1))
    assert dense.batch_size == 1  # single_stream does not search the batch size
    conv = space.auto(exp, KERAS_CONV)
    assert 4 not in _values(conv.bits) and conv.int8_mode == "static"
    onnx_model = space.auto(exp, ONNX_MODEL)
    assert "litert" not in _values(onnx_model.runtime) and _values(onnx_model.sparsity) == [0.0]
    assert set(_values(dense.runtime)) == set(space.installed_runtimes("keras"))
    assert "tensorflow" not in _values(dense.runtime)


def test_offline_searches_the_batch_size():
    exp = config.parse({"name": "x", "scenario": "offline"})
    assert _values(space.auto(exp, KERAS_CONV).batch_size) == space.OFFLINE_BATCH_SIZES


def test_parameters_that_do_not_apply_are_not_enumerated():
    exp = config.parse({"name": "x", "search_space": {
        "bits": [32, 8], "int8_mode": ["static", "dynamic"], "per_channel": [False, True],
        "runtime": ["onnxruntime", "litert"], "provider": ["CPUExecutionProvider", "XnnpackExecutionProvider"]}})
    points = space_mod.grid_points(exp)
    # per_channel only for int8 static made by the ONNX quantizer (the TFLite converter is always
    # per-channel), provider only for onnxruntime/openvino
    assert all("per_channel" not in p or (p["bits"] == 8 and p["int8_mode"] == "static") for p in points)
    assert all("provider" not in p and "per_channel" not in p for p in points if p["runtime"] == "litert")
    assert len(points) == (1 + 2 + 1) * 2 + (1 + 1 + 1)  # onnxruntime x 2 providers: fp32, static x2,
    # dynamic; litert: fp32, static, dynamic
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


def test_default_n_trials_is_every_distinct_configuration_up_to_40():
    small = config.parse({"name": "x", "search_space": {"bits": [32, 8], "threads": [1, 2]}})
    assert small.n_trials is None and space.resolve(small).n_trials == 4
    assert space.resolve(small.model_copy(update={"n_trials": 3})).n_trials == 3
    big = space.resolve(config.parse({"name": "x"}), KERAS_DENSE)
    assert not big.auto_space and len(space.distinct(big)) > 40 and big.n_trials == 40


def test_plan_prints_the_space_and_count_without_running(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsearch_space:\n  bits: [32, 16, 8]\n  per_channel: [false, true]\n"
                    "  threads: [1, 2]\n")
    res = run_cli("plan", str(path))
    assert res.returncode == 0, res.stderr
    assert "single_stream: lowest p90 latency at batch 1" in res.stdout
    assert "distinct configurations: 8" in res.stdout  # (fp32, fp16, int8 x2) x 2 threads
    assert "trials: 8" in res.stdout
    assert not (tmp_path / "experiments").exists()


@pytest.mark.slow
def test_plan_of_an_experiment_without_search_space_explores(tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text("name: auto\nmodel: digits_cnn\n")
    res = run_cli("plan", str(path))
    assert res.returncode == 0, res.stderr
    assert "automatic" in res.stdout and "runtime: [" in res.stdout and "bits: [32, 16, 8" in res.stdout
    n = int(res.stdout.split("distinct configurations: ")[1].split()[0])
    assert n > 10


def test_first_points_try_each_runtime_fast_path_at_fewest_and_most_threads():
    exp = space.resolve(config.parse({"name": "x", "scenario": "offline", "search_space": {
        "bits": [32, 16, 8], "int8_mode": ["static", "dynamic"], "per_channel": [False, True],
        "runtime": ["onnxruntime", "litert"], "threads": [1, 2, 3], "batch_size": [1, 8, 32]}}))
    first = space.first_points(exp, 40)
    assert [(p["runtime"], p["threads"]) for p in first] == [
        ("onnxruntime", 3), ("litert", 3), ("onnxruntime", 1), ("litert", 1)]
    assert all(p["bits"] == 8 and p["int8_mode"] == "static" and p.get("per_channel", True)
               and p["batch_size"] == 32 for p in first)
    assert all(p["per_channel"] for p in first if p["runtime"] == "onnxruntime")
    assert all(p in space.grid_points(exp) for p in first)  # real configurations of the space
    # at most a quarter of the budget, keeping the most threads
    assert [p["threads"] for p in space.first_points(exp, 8)] == [3, 3]
    # single_stream answers at the smallest batch; a space without int8 still gets its runtimes
    ss = space.resolve(config.parse({"name": "x", "search_space": {
        "bits": [32, 16], "runtime": ["onnxruntime", "litert"], "threads": 1, "batch_size": [1, 8]}}))
    assert space.first_points(ss, 40) == [{"bits": 32, "runtime": "onnxruntime", "batch_size": 1},
                                          {"bits": 32, "runtime": "litert", "batch_size": 1}]
    assert space.first_points(exp.model_copy(update={"sampler": "grid"}), 40) == []


def test_a_new_sampled_study_measures_the_fast_paths_first(tmp_path):
    from workbench.sweep import study

    exp = space.resolve(config.parse({"name": "x", "sampler": "tpe", "search_space": {
        "bits": [32, 8], "runtime": ["onnxruntime", "litert"], "threads": [1, 2]}}))
    st = study.open_study(exp, "x", f"sqlite:///{tmp_path / 's.db'}")
    first = space.enqueue_first_points(st, exp, 16)
    assert len(first) == 4
    asked = [space.suggest(st.ask(), exp) for _ in range(len(first))]
    assert all(a[k] == v for a, p in zip(asked, first) for k, v in p.items())
    assert space.enqueue_first_points(st, exp, 16) == []  # not again in a study with trials


def test_an_onnx_only_model_gets_dynamic_int8_and_the_op_choice():
    # a model trained elsewhere, with little MatMul weight (a CNN) and ops besides its Conv/MatMul
    exp = config.parse({"name": "x"})
    onnx_conv = space.auto(exp, {"format": "onnx", "share": 0.1, "trainable": False, "mixed_ops": True})
    assert _values(onnx_conv.int8_mode) == ["static", "dynamic"]
    assert _values(onnx_conv.quant_ops) == ["all", "compute"]
    assert 4 not in _values(onnx_conv.bits)
    # the op choice comes from the model's profile: none when every computing op is a MatMul/Conv
    assert _values(dict(space.auto(exp, {**KERAS_CONV, "mixed_ops": False})).get("quant_ops", "all")) == ["all"]


def test_the_profile_says_where_the_op_choice_matters():
    import onnx
    from onnx import helper

    def graph(*ops):
        return helper.make_model(helper.make_graph(
            [helper.make_node(op, ["a", "b"], [f"o{i}"], name=f"n{i}") for i, op in enumerate(ops)], "g", [], []))

    from workbench.variants import quantize

    assert quantize.mixed_ops(graph("MatMul", "Reshape", "Div", "MatMul"))
    assert not quantize.mixed_ops(graph("Conv", "Reshape", "Gemm"))
    assert not quantize.mixed_ops(graph("Add", "Mul"))
    assert isinstance(graph("MatMul"), onnx.ModelProto)


def test_an_onnx_only_model_has_no_tensorflow_baseline(tmp_path):
    from workbench.sweep import baselines

    (tmp_path / "m.onnx").write_bytes(b"")  # only its name is read: the format is the file type
    onnx_only = config.parse({"name": "x", "model": "m.onnx"}, base_dir=tmp_path)
    assert {p["runtime"] for p in baselines.points(onnx_only)} == {"onnxruntime"}
    keras = config.parse({"name": "x"})
    assert {p["runtime"] for p in baselines.points(keras)} == {"tensorflow", "onnxruntime"}
