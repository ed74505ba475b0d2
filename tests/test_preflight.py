"""Preflight: the model and data are loaded once, before the run directory, the study, the
baselines or any trial exist; a mistake stops the sweep with one line and exit code 2."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT

from workbench import cli, config
from workbench.core.errors import DataError, ModelError
from workbench.sweep import preflight


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Small data (experiments/make_examples.py) and models that are wrong in one way each."""
    import keras
    from keras import layers

    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "experiments" / "make_examples.py")
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    out = tmp_path_factory.mktemp("preflight")
    digits = examples.digits_data(out)
    examples.regression_data(out)
    np.savez(out / "no_train.npz", x_eval=digits["x_eval"], y_eval=digits["y_eval"])

    def save(name, *body, inputs=None):
        model = keras.Sequential([inputs if inputs is not None else keras.Input((8, 8, 1)), *body], name=name.split(".")[0])
        model.save(out / name)

    save("lambda.keras", layers.Lambda(lambda x: x * 2.0), layers.Flatten(), layers.Dense(10, activation="softmax"))
    save("int32.keras", layers.Flatten(), layers.Dense(10, activation="softmax"),
         inputs=keras.Input((8, 8, 1), dtype="int32"))
    save("flat.keras", layers.Dense(10, activation="softmax"), inputs=keras.Input((64,)))
    save("five.keras", layers.Flatten(), layers.Dense(5, activation="softmax"))
    save("good.keras", layers.Flatten(), layers.Dense(10, activation="softmax"))
    save("two_out.keras", layers.Dense(2), inputs=keras.Input((8,)))
    save("reg.keras", layers.Dense(1), inputs=keras.Input((8,)))
    (out / "fake.keras").write_bytes(b"not a zip archive\n")  # exists, but is no Keras file
    return out


CASES = {
    # name: (model, data, extra settings, error type, what the one line must say)
    "lambda": ("lambda.keras", "digits.npz", {}, ModelError,
               "contains a Lambda layer (Python code); refusing to load it (set trust_model_code: true"),
    "int32": ("int32.keras", "digits.npz", {}, DataError, "expects dtype int32 but data digits has float32"),
    "shape": ("flat.keras", "digits.npz", {}, DataError,
              "expects shape (batch, 64) but data digits has samples of shape (8, 8, 1)"),
    "labels": ("five.keras", "digits.npz", {}, DataError,
               "outputs shape (5,) per sample but data digits has class labels up to 9"),
    "task": ("reg.keras", "regression.npz", {}, DataError,
             "y_eval must be integer class labels of shape (n,) for task classification"),
    "regression_outputs": ("two_out.keras", "regression.npz", {"task": "regression"}, DataError,
                           "gives 2 values per sample but data regression has 1 target value(s)"),
    "fake_keras": ("fake.keras", "digits.npz", {}, ModelError,
                   "fake.keras: not a Keras model file (a .keras file is a zip archive"),
    "builtin_without_train": ("digits_mlp", "no_train.npz", {}, DataError,
                              "the builtin model digits_mlp is trained on the data's x_train/y_train"),
    "builtin_regression": ("digits_mlp", "regression.npz", {"task": "regression"}, ModelError,
                           "the builtin models are classifiers; task regression needs your own model"),
}


def _experiment(files: Path, name: str, model: str, data: str, **extra) -> Path:
    doc = {"name": name, "model": model, "data": data, "n_trials": 2,
           "measurement": {"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 1.0}, **extra}
    path = files / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_refuses_with_one_line(files, case):
    model, data, extra, error, expected = CASES[case]
    exp = config.load(_experiment(files, case, model, data, **extra))
    with pytest.raises(error) as err:
        preflight.check(exp)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["lambda", "int32", "shape", "labels", "task"])
def test_sweep_stops_before_it_starts(files, tmp_path, case, capfd):
    model, data, extra, _, expected = CASES[case]
    runs = tmp_path / "runs"
    code = cli.main(["sweep", str(_experiment(files, case, model, data, **extra)), "--runs-dir", str(runs),
                     "--quiet"])
    out, err = capfd.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not runs.exists()  # no run directory, no study, no baseline


def test_a_model_that_fits_passes_and_is_cached(files):
    from workbench import data, models

    exp = config.load(_experiment(files, "good", "good.keras", "digits.npz"))
    preflight.check(exp)
    model = models.resolve(exp.resolve(exp.model), data.load(exp.resolve(exp.data)))
    assert (model.dir / ".complete").exists()  # the trials will not load or build it again
    trusted = config.load(_experiment(files, "trusted", "lambda.keras", "digits.npz", trust_model_code=True))
    preflight.check(trusted)  # the Lambda model is accepted once the user trusts it


@pytest.mark.parametrize("case", ["lambda", "int32"])
def test_cli_sweep_of_a_refused_model_prints_exactly_one_line(files, tmp_path, case):
    """As a user runs it: TensorFlow's C++ start-up lines are not on the terminal either."""
    from conftest import run_cli

    model, data, extra, _, expected = CASES[case]
    runs = tmp_path / "runs"
    result = run_cli("sweep", str(_experiment(files, f"cli-{case}", model, data, **extra)),
                     "--runs-dir", str(runs))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert result.stdout == "" and not runs.exists()


def test_framework_start_up_lines_never_reach_the_terminal():
    """A cold cache trains the builtin model during preflight; TensorFlow's native start-up
    lines (written before TF_CPP_MIN_LOG_LEVEL applies) are kept out of the sweep's terminal."""
    from workbench.sweep.preflight import _without_framework_noise

    held = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            b"I0000 00:00:1795977196.480829   12325 port.cc:153] oneDNN custom operations are on.\n"
            b"E0000 00:00:1795977198.595090   12325 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
            b"To enable the following instructions: AVX2 AVX512F, in other operations, rebuild\n"
            b"WARNING:tensorflow:5 out of the last 5 calls triggered tf.function retracing.\n"
            b"something the user must see\n")
    assert _without_framework_noise(held) == b"something the user must see\n"
