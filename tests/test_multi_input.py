"""A model with two named inputs, one of them int32 (token-like ids), built here: every runtime
that can hold it runs it end to end (in-process trial.run per runtime, and one real sweep), and
the data/model mismatches a user can make are one-line errors naming the input."""

from pathlib import Path

import numpy as np
import pytest

from workbench import config, data, models, sweep, trial
from workbench.core.errors import DataError, ModelError
from workbench.results import table
from workbench.data import inputs

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0, calibration_samples=50)
VOCAB, IDS, FEATURES, CLASSES = 16, 4, 6, 3


def _arrays(rng, n):
    """Label = (first id + sign of the first feature) mod 3: both inputs matter."""
    ids = rng.integers(0, VOCAB, (n, IDS)).astype(np.int32)
    feats = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = (ids[:, 0] + (feats[:, 0] > 0)) % CLASSES
    return {"features": feats, "ids": ids}, y.astype(np.int64)


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    import keras
    from keras import layers

    out = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3000), ("calib", 100), ("eval", 400)):
        x, y = _arrays(rng, n)
        arrays.update({f"x_{split}.{k}": v for k, v in x.items()}, **{f"y_{split}": y})
    np.savez(out / "two.npz", **arrays)

    keras.utils.set_random_seed(0)
    feats = keras.Input((FEATURES,), name="features")
    ids = keras.Input((IDS,), dtype="int32", name="ids")
    e = layers.Flatten()(layers.Embedding(VOCAB, 8)(ids))
    h = layers.Dense(64, activation="relu")(layers.Concatenate()([e, layers.Dense(16, activation="relu")(feats)]))
    model = keras.Model([feats, ids], layers.Dense(CLASSES, activation="softmax")(h), name="two_inputs")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit({"features": arrays["x_train.features"], "ids": arrays["x_train.ids"]}, arrays["y_train"],
              epochs=25, batch_size=64, verbose=0)
    model.save(out / "two.keras")
    return out


def _kw(d: Path, **extra):
    return {"model": str(d / "two.keras"), "data": str(d / "two.npz"), **FAST, **extra}


def test_npz_layout_gives_a_dict_per_split(two_inputs):
    ds = data.load(str(two_inputs / "two.npz"))
    assert ds.multi_input and set(ds.x_eval) == {"features", "ids"}
    assert ds.x_eval["ids"].dtype == np.int32 and ds.x_eval["features"].dtype == np.float32
    assert ds.n_eval == 400 and inputs.rows(ds.x_train) == 3000
    part = ds.take("eval", 10, 15)
    assert part["ids"].shape == (5, IDS) and part["features"].shape == (5, FEATURES)


def test_model_records_its_inputs(two_inputs):
    ds = data.load(str(two_inputs / "two.npz"))
    model = models.resolve(str(two_inputs / "two.keras"), ds)
    assert {i["name"]: i["dtype"] for i in model.inputs} == {"features": "float32", "ids": "int32"}
    assert model.accuracy >= 80.0


# (runtime, bits, int8_mode): every runtime, and each quantization path that keeps ids integer
ROUTES = [("onnxruntime", 32, "static"), ("onnxruntime", 16, "static"), ("onnxruntime", 8, "dynamic"),
          ("onnxruntime", 8, "static"), ("openvino", 32, "static"), ("tensorflow", 32, "static"),
          ("litert", 32, "static"), ("litert", 8, "dynamic"), ("litert", 8, "static")]


@pytest.mark.parametrize("runtime,bits,mode", ROUTES)
def test_two_inputs_run_in_every_runtime(two_inputs, runtime, bits, mode):
    m = trial.run(_kw(two_inputs, runtime=runtime, bits=bits, int8_mode=mode, batch_size=3))
    assert m["status"] == "complete", m.get("reason")
    assert m["eval_samples"] == 400
    if bits == 32:  # the same function in another runtime: the same outputs
        assert m["max_abs_diff"] < 1e-4 and m["accuracy_drop"] == pytest.approx(0.0, abs=0.3)
    else:
        assert m["accuracy_drop"] < 10.0


def test_unstructured_pruning_of_a_two_input_model(two_inputs):
    m = trial.run(_kw(two_inputs, sparsity=0.5, finetune_epochs=1))
    assert m["status"] == "complete", m.get("reason")
    assert m["sparsity_reached"] > 0.3


def test_channel_pruning_of_a_two_input_model_is_pruned_with_reason(two_inputs):
    m = trial.run(_kw(two_inputs, sparsity=0.5, prune_structure="channels", finetune_epochs=0))
    assert m["status"] == "pruned" and "channel pruning" in m["reason"]


def test_mismatches_name_the_input_expected_and_found(two_inputs, tmp_path):
    ds = data.load(str(two_inputs / "two.npz"))
    with np.load(two_inputs / "two.npz") as z:
        arrays = dict(z)
    wrong_dtype = {**arrays, **{k: v.astype(np.float32) for k, v in arrays.items() if k.endswith(".ids")}}
    np.savez(tmp_path / "float_ids.npz", **wrong_dtype)
    with pytest.raises(DataError, match=r"input ids expects dtype int32 but data float_ids has float32") as err:
        models.resolve(str(two_inputs / "two.keras"), data.load(str(tmp_path / "float_ids.npz")))
    assert "\n" not in str(err.value)
    wrong_shape = {**arrays, **{k: v[:, :2] for k, v in arrays.items() if k.endswith(".ids")}}
    np.savez(tmp_path / "short_ids.npz", **wrong_shape)
    with pytest.raises(DataError, match=r"input ids expects shape \(batch, 4\) but data short_ids has samples of shape \(2,\)"):
        models.resolve(str(two_inputs / "two.keras"), data.load(str(tmp_path / "short_ids.npz")))
    np.savez(tmp_path / "one.npz", x_eval=arrays["x_eval.features"], y_eval=arrays["y_eval"])
    with pytest.raises(DataError, match=r"has 2 input\(s\) \(features, ids\).*x_eval.<name>"):
        models.resolve(str(two_inputs / "two.keras"), data.load(str(tmp_path / "one.npz")))
    missing = {k: v for k, v in arrays.items() if k != "x_train.ids"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(DataError, match="x_train has inputs"):
        data.load(str(tmp_path / "missing.npz"))
    assert ds.multi_input


def test_output_is_chosen_by_name_or_index(two_inputs, tmp_path):
    import keras

    base = keras.saving.load_model(two_inputs / "two.keras")
    aux = keras.layers.Dense(2, name="aux")(base.layers[-2].output)
    two_out = keras.Model(base.inputs, [aux, base.outputs[0]], name="two_outputs")
    two_out.save(tmp_path / "two_out.keras")
    ds = data.load(str(two_inputs / "two.npz"))
    ref = models.resolve(str(two_inputs / "two.keras"), ds).reference()
    by_index = models.resolve(str(tmp_path / "two_out.keras"), ds, output=1)
    assert np.allclose(by_index.reference(), ref, atol=1e-5)
    name = by_index.meta["outputs"][1]
    assert models.resolve(str(tmp_path / "two_out.keras"), ds, output=name).key != by_index.key
    with pytest.raises(ModelError, match="has no output 'nope'"):
        models.resolve(str(tmp_path / "two_out.keras"), ds, output="nope")
    m = trial.run(_kw(two_inputs, model=str(tmp_path / "two_out.keras"), output=1, runtime="litert"))
    assert m["status"] == "complete" and m["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_two_input_sweep_end_to_end(two_inputs, tmp_path):
    exp = config.parse({
        "name": "two_inputs", "model": "two.keras", "data": "two.npz", "sampler": "grid", "n_trials": 4,
        "measurement": {"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 2},
        "calibration_samples": 50,
        "search_space": {"bits": [32, 8], "runtime": ["onnxruntime", "litert"]},
    }, "two.yaml", two_inputs)
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    df = table.load_table(run_dir)
    trials = df[df.kind == "trial"]
    assert len(trials) == 4 and set(trials.state) == {"COMPLETE"}, trials.reason.tolist()
    assert (run_dir / "best.json").is_file()


@pytest.mark.parametrize("runtime,bits", [("onnxruntime", 8), ("openvino", 32), ("litert", 8),
                                          ("tensorflow", 32)])
def test_export_bundle_feeds_every_input(two_inputs, tmp_path, runtime, bits):
    import json
    import subprocess
    import sys

    from workbench.export.run import export_trial

    m = trial.run(_kw(two_inputs, runtime=runtime, bits=bits, batch_size=2))
    assert m["status"] == "complete", m.get("reason")
    out = export_trial(m, tmp_path / "bundle")
    with np.load(out / "sample_input.npz") as z:
        assert z["ids"].dtype == np.int32 and z["features"].dtype == np.float32
    check = subprocess.run([sys.executable, "predict.py", "--check", "--json"], cwd=out,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(result["expected"]["accuracy"], abs=1e-6)
    run = subprocess.run([sys.executable, "predict.py", "sample_input.npz", "--out", "y.npy"], cwd=out,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.load(out / "y.npy").shape == (2, CLASSES)


def test_a_dtype_mismatch_stops_the_sweep_at_preflight(two_inputs, tmp_path):
    from conftest import run_cli

    with np.load(two_inputs / "two.npz") as z:
        arrays = {k: (v.astype(np.int64) if k.endswith(".ids") else v) for k, v in z.items()}
    np.savez(tmp_path / "int64_ids.npz", **arrays)
    (tmp_path / "exp.yaml").write_text(
        f"name: mismatch\nmodel: {two_inputs / 'two.keras'}\ndata: int64_ids.npz\nn_trials: 1\n")
    res = run_cli("sweep", str(tmp_path / "exp.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "input ids expects dtype int32 but data int64_ids has int64" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "runs" / "mismatch").exists()
