"""Bad experiment files give one line naming the file and the field, exit code 2, no traceback."""

import textwrap

import pytest
from conftest import ROOT, run_cli

from workbench import config
from workbench.core.errors import ConfigError

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
    # a range is checked over every value it can produce, not its ends only
    "bits_range.yaml": ("name: x\nsearch_space:\n  bits: {low: 4, high: 32}\n",
                        "search_space.bits: the range 4..32 includes 5, which is not allowed"),
    "bits_float_range.yaml": ("name: x\nsearch_space:\n  bits: {low: 4.0, high: 32.0}\n",
                              "search_space.bits: a range is not allowed here"),
    "bits_float.yaml": ("name: x\nsearch_space:\n  bits: 8.0\n", "search_space.bits: unknown value 8.0"),
    "runtime_range.yaml": ("name: x\nsearch_space:\n  runtime: {low: 1, high: 2}\n",
                           "search_space.runtime: a range is not allowed here"),
    "step_and_log.yaml": ("name: x\nsearch_space:\n  threads: {low: 1, high: 4, step: 1, log: true}\n",
                          "search_space.threads: step and log: true cannot be used together"),
    "log_from_zero.yaml": ("name: x\nsearch_space:\n  sparsity: {low: 0.0, high: 0.5, log: true}\n",
                           "search_space.sparsity: a log range needs low > 0"),
    "fractional_threads.yaml": ("name: x\nsearch_space:\n  threads: {low: 1, high: 4, step: 0.5}\n",
                                "search_space.threads: a range of integers is needed"),
    "nan_range.yaml": ("name: x\nsearch_space:\n  sparsity: {low: 0.0, high: .nan}\n",
                       "search_space.sparsity.high: must be a finite number"),
    "string_range.yaml": ("name: x\nsearch_space:\n  sparsity: {low: '0', high: 0.5}\n",
                          "search_space.sparsity.low: must be a number (got '0')"),
    "huge_range.yaml": ("name: x\nsearch_space:\n  batch_size: {low: 1, high: 1000000000}\n",
                        "search_space.batch_size: the range holds 1,000,000,000 values"),
    "huge_grid.yaml": ("name: x\nsampler: grid\nsearch_space:\n  batch_size: {low: 1, high: 1000}\n"
                       "  threads: {low: 1, high: 1000}\n", "sampler: the grid has up to 1,000,000 points"),
    "negative_seed.yaml": ("name: x\nseed: -1\n", "seed: Input should be greater than or equal to 0"),
    "infinite_time.yaml": ("name: x\nmeasurement: {min_seconds: .inf, max_seconds: .inf}\n",
                           "measurement.min_seconds: Input should be a finite number"),
    "twice.yaml": ("name: x\nobjectives: [accuracy, accuracy]\n", "objectives: each objective may be given once"),
    "nul.yaml": ("name: x\x00\n", "not valid YAML (unacceptable character #x0000"),
}


@pytest.mark.parametrize("spec,values", [
    ({"bits": {"low": 8, "high": 16, "step": 8}}, {"bits": [8, 16]}),
    ({"threads": {"low": 1, "high": 4, "log": True}}, {"threads": [1, 2, 3, 4]}),
])
def test_ranges_whose_every_value_is_allowed_are_accepted(spec, values):
    exp = config.parse({"name": "x", "search_space": spec})
    for name, expected in values.items():
        assert getattr(exp.search_space, name).values() == expected


def test_binary_experiment_file_is_one_line(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00\x81binary")
    with pytest.raises(ConfigError, match=r"not a UTF-8 text file \(byte 8\)"):
        config.load(path)
    result = run_cli("sweep", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {path}: not a UTF-8 text file (byte 8); "
                                                  "an experiment is a YAML file"]


@pytest.mark.parametrize("args,message", [
    (["--n-trials", "0"], "--n-trials: must be at least 1 (got 0)"),
    (["--n-trials", "-3"], "--n-trials: must be at least 1 (got -3)"),
    (["--add", "-1"], "--add: must be at least 0 (got -1)"),
    (["--workers", "0"], "--workers: must be at least 1 (got 0)"),
])
def test_sweep_counts_are_checked_before_anything(tmp_path, args, message, capsys):
    from workbench import cli

    runs = tmp_path / "runs"
    assert cli.main(["sweep", str(ROOT / "experiments" / "digits.yaml"), "--runs-dir", str(runs), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not runs.exists()


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
    from workbench.sweep import space

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
    from workbench.sweep import study

    exp = config.parse({"name": "x"})
    assert study.storage_url(exp, tmp_path, None) == f"sqlite:///{tmp_path / 'study.db'}"
    assert study.storage_url(exp, tmp_path, None, workers=2) == f"journal:{tmp_path / 'study.journal'}"
    assert study.storage_url(exp, tmp_path, "postgresql://u@h/db", workers=2) == "postgresql://u@h/db"
    (tmp_path / "study.db").touch()
    with pytest.raises(ConfigError, match="this study is in SQLite"):
        study.storage_url(exp, tmp_path, None, workers=2)


@pytest.mark.parametrize("extra", [{}, {"scenario": "offline"}, {"scenario": "server", "slo_ms": 50}])
def test_a_run_snapshot_of_every_scenario_loads_back(extra, tmp_path):
    """Workers of `sweep --workers N` read the run's experiment.yaml: every setting written
    (None and defaults included) must load back to the same experiment."""
    import yaml

    exp = config.parse({"name": "x", "search_space": {"bits": [32, 8]}, **extra})
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    again = config.load(path)
    assert again.model_dump(mode="json") == exp.model_dump(mode="json")
