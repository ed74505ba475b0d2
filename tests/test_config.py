"""Bad experiment files give one line naming the file and the field, exit code 2, no traceback."""

import textwrap

import pytest

from conftest import ROOT, run_cli
from workbench import config
from workbench.errors import ConfigError

BAD = {
    "unknown_key.yaml": ("name: x\nfoo: 1\n", "foo: unknown key"),
    "nested_unknown.yaml": ("name: x\nsearch_space:\n  batchsize: 4\n", "search_space.batchsize: unknown key"),
    "wrong_type.yaml": ("name: x\nn_trials: many\n", "n_trials:"),
    "empty_list.yaml": ("name: x\nsearch_space:\n  bits: []\n", "search_space.bits: must not be an empty list"),
    "negative_batch.yaml": ("name: x\nsearch_space:\n  batch_size: [1, -4]\n",
                            "search_space.batch_size: must be a positive integer (got -4)"),
    "unknown_provider.yaml": ("name: x\nsearch_space:\n  provider: FooExecutionProvider\n",
                              "search_space.provider: unknown value 'FooExecutionProvider'"),
    "bad_bits.yaml": ("name: x\nsearch_space:\n  bits: [32, 7]\n", "search_space.bits: unknown value 7"),
    "bad_range.yaml": ("name: x\nsearch_space:\n  threads: {low: 4, high: 1}\n",
                       "search_space.threads: low (4) must not exceed high (1)"),
    "bad_measurement.yaml": ("name: x\nmeasurement:\n  min_seconds: 5\n  max_seconds: 1\n",
                             "measurement: max_seconds (1.0) must be >= min_seconds (5.0)"),
    "not_yaml.yaml": ("name: [x\n", "not valid YAML"),
    "missing_name.yaml": ("n_trials: 3\n", "name: Field required"),
    "bad_objective.yaml": ("name: x\nobjectives: [speed]\n", "objectives: unknown objective 'speed'"),
}


@pytest.mark.parametrize("filename", sorted(BAD))
def test_bad_config_is_one_line_naming_field_and_file(tmp_path, filename):
    text, expected = BAD[filename]
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch_space:\n  batch_size: -1\n")
    result = run_cli("sweep", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {path}: search_space.batch_size: must be a positive integer (got -1)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_file_is_named():
    result = run_cli("sweep", "experiments/nope.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: experiments/nope.yaml: experiment file not found"


def test_default_experiment_is_valid():
    exp = config.load(ROOT / "experiments" / "digits.yaml")
    assert exp.name == "digits" and exp.model == "digits_cnn" and exp.data == "digits"
    from workbench import space

    assert exp.scenario == "single_stream" and exp.n_trials is None  # default: every distinct one
    assert space.resolve(exp).n_trials == len(space.distinct(exp)) >= 3


def test_relative_paths_resolve_from_the_experiment_file(tmp_path):
    (tmp_path / "exp.yaml").write_text(textwrap.dedent("""
        name: mine
        data: data/mine.npz
    """))
    exp = config.load(tmp_path / "exp.yaml")
    assert exp.resolve(exp.data) == str(tmp_path / "data" / "mine.npz")
    assert exp.resolve(exp.model) == "digits_cnn"


def test_default_storage_follows_workers(tmp_path):
    from workbench import sweep

    exp = config.parse({"name": "x"})
    assert sweep.storage_url(exp, tmp_path, None) == f"sqlite:///{tmp_path / 'study.db'}"
    assert sweep.storage_url(exp, tmp_path, None, workers=2) == f"journal:{tmp_path / 'study.journal'}"
    assert sweep.storage_url(exp, tmp_path, "postgresql://u@h/db", workers=2) == "postgresql://u@h/db"
    (tmp_path / "study.db").touch()
    with pytest.raises(ConfigError, match="this study is in SQLite"):
        sweep.storage_url(exp, tmp_path, None, workers=2)
