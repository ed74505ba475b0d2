"""`workbench export`: a bundle per runtime opens the artifact with the trial's exact session
options and re-measures it (`predict.py --check`) in a fresh process; export never deletes a
directory it did not write."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from test_multi_input import two_inputs  # noqa: F401 - the two-input model fixture

from workbench import runtimes, trial
from workbench.config.params import TrialParams
from workbench.export import bundle
from workbench.export.run import export_trial

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0)


def _python(out: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "predict.py", *args], cwd=out, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def export_and_check(params: dict, out: Path) -> tuple[dict, dict]:
    """Run the trial, bundle it, run predict.py on the sample and --check; returns (metrics, check)."""
    m = trial.run({**FAST, **params})
    assert m["status"] == "complete", m.get("reason")
    export_trial(m, out)
    p = TrialParams.parse(m["params"])
    # the exact session options of the measured trial, as the runtime plug-in opens them
    recorded = json.loads((out / "bundle.json").read_text())["session_options"]
    assert recorded == runtimes.get(p.runtime).session_options(p)
    line = next(x for x in (out / "predict.py").read_text().splitlines() if x.startswith("OPTIONS = "))
    assert ast.literal_eval(line.removeprefix("OPTIONS = ")) == recorded
    proc = _python(out, next(out.glob("sample_input.np[yz]")).name, "--out", "y.npy")
    y = np.load(out / "y.npy")
    assert y.shape[0] == p.batch_size and np.isfinite(y).all() and "top-1" in proc.stdout
    check = json.loads(_python(out, "--check", "--json").stdout.strip().splitlines()[-1])
    # same artifact, same options, same rows: the same quality as workbench measured
    assert check["accuracy"] == check["expected"]["accuracy"]
    assert check["samples"] == min(bundle.CHECK_ROWS, m["eval_samples"])
    if check["samples"] == m["eval_samples"]:
        assert check["accuracy"] == pytest.approx(m["accuracy"])
    assert check["trial_p50_ms"] == m["latency_p50_ms"] and check["p50_ms"] > 0
    assert check["p50_ratio"] == pytest.approx(check["p50_ms"] / m["latency_p50_ms"])
    return m, check


@pytest.mark.slow
@pytest.mark.parametrize("params", [
    dict(runtime="onnxruntime", threads=2, inter_op_threads=2, graph_optimization="basic",
         execution_mode="parallel", batch_size=4),
    dict(runtime="openvino", ov_hint="THROUGHPUT", ov_streams=2, threads=2),
    dict(runtime="litert", bits=8, int8_mode="static", threads=2),
    dict(runtime="tensorflow"),
], ids=lambda p: p["runtime"])
def test_bundle_reproduces_each_runtime(params, tmp_path):
    m, check = export_and_check(params, tmp_path / "bundle")
    assert (tmp_path / "bundle" / Path(m["artifact"]).name.replace(Path(m["artifact"]).stem, "model")).exists()
    if params["runtime"] == "litert":
        assert (tmp_path / "bundle" / "model.tflite").stat().st_size == m["size_bytes"]


@pytest.mark.slow
def test_bundle_of_a_savedmodel_user_model(tmp_path_factory, tmp_path):
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "experiments" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    examples = module.make_all(tmp_path_factory.mktemp("byo"))
    m, _ = export_and_check(dict(runtime="tensorflow", model=str(examples / "digits_mlp_savedmodel"),
                                 data=str(examples / "digits.npz")), tmp_path / "bundle")
    assert m["artifact_format"] == "savedmodel"
    assert (tmp_path / "bundle" / "saved_model" / "saved_model.pb").is_file()
    text = _python(tmp_path / "bundle", "--check").stdout  # the human-readable lines
    assert "accuracy" in text and "bundled samples" in text and "ratio" in text


def _run_dir(tmp_path: Path) -> Path:
    """A run directory with one completed trial in a real Optuna SQLite study."""
    import optuna

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = trial.run({**FAST, "runtime": "onnxruntime"})
    url = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    t = study.ask()
    t.set_user_attr("params", m["params"])
    t.set_user_attr("metrics", m)
    study.tell(t, 1.0)
    (run_dir / "run.json").write_text(json.dumps({"experiment": "e", "study": "s", "storage": url,
                                                  "objectives": ["latency_p50_ms"],
                                                  "max_accuracy_drop": 1.0}))
    return run_dir


@pytest.mark.slow
def test_export_never_deletes_what_it_did_not_write(tmp_path):
    run_dir = _run_dir(tmp_path)
    # an existing directory that is not a bundle: refused in one line, left untouched
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    (mine / "sub" / "data.bin").write_bytes(b"\0" * 10)
    res = run_cli("export", str(run_dir), "--trial", "0", "--out", str(mine))
    assert res.returncode == 2 and res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert "not a bundle written by workbench export" in res.stderr
    assert sorted(p.name for p in mine.rglob("*")) == ["data.bin", "keep.txt", "sub"]
    assert (mine / "keep.txt").read_text() == "mine"
    # a file path: refused, untouched
    f = tmp_path / "file.txt"
    f.write_text("x")
    res = run_cli("export", str(run_dir), "--trial", "0", "--out", str(f))
    assert res.returncode == 2 and "is a file" in res.stderr and f.read_text() == "x"
    # its own bundle: replaced, removing only the files its marker lists
    out = tmp_path / "bundle"
    assert run_cli("export", str(run_dir), "--trial", "0", "--out", str(out)).returncode == 0
    listed = json.loads((out / bundle.MARKER).read_text())["files"]
    assert {"model.onnx", "predict.py", "config.json", "check.json"} <= set(listed)
    (out / "notes.txt").write_text("added by the user")
    (out / "predict.py").write_text("stale")
    res = run_cli("export", str(run_dir), "--trial", "0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "notes.txt").read_text() == "added by the user"
    assert "def load()" in (out / "predict.py").read_text()
    assert json.loads((out / bundle.MARKER).read_text())["files"] == listed
    # a forged marker pointing outside the bundle is refused, nothing is deleted
    (out / bundle.MARKER).write_text(json.dumps({"files": ["../mine"]}))
    res = run_cli("export", str(run_dir), "--trial", "0", "--out", str(out))
    assert res.returncode == 2 and (mine / "keep.txt").exists() and (out / "predict.py").exists()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "litert", "tensorflow"])
def test_bundle_of_a_two_input_model(two_inputs, runtime, tmp_path):
    # named float32 + int32 inputs travel as .npz, matched by name in every runtime's loader
    m, check = export_and_check(dict(model=str(two_inputs / "two.keras"), data=str(two_inputs / "two.npz"),
                                     runtime=runtime, calibration_samples=50), tmp_path / "bundle")
    out = tmp_path / "bundle"
    with np.load(out / "check_inputs.npz") as z:
        assert set(z.files) == {"features", "ids"} and z["ids"].dtype == np.int32
    assert check["samples"] == bundle.CHECK_ROWS


def test_bundle_pins_its_requirements_and_says_what_is_missing(tmp_path):
    """requirements.txt names numpy and the runtime at the versions measured; predict.py run by
    a Python that has numpy but no onnxruntime says so in one line; config.json holds no
    serving settings a single-stream trial never measured, and serving defaults follow it."""
    from importlib import metadata

    m = trial.run({**FAST, "model": "digits_mlp", "runtime": "onnxruntime"})
    assert m["status"] == "complete", m.get("reason")
    out = tmp_path / "bundle"
    export_trial(m, out)
    reqs = (out / "requirements.txt").read_text().split()
    assert reqs == [f"numpy=={metadata.version('numpy')}", f"onnxruntime=={metadata.version('onnxruntime')}"]

    # -S: no site-packages; numpy alone, the real package, on the path
    only_numpy = tmp_path / "only_numpy"
    only_numpy.mkdir()
    (only_numpy / "numpy").symlink_to(Path(np.__file__).parent)
    if (Path(np.__file__).parent.parent / "numpy.libs").exists():
        (only_numpy / "numpy.libs").symlink_to(Path(np.__file__).parent.parent / "numpy.libs")
    proc = subprocess.run([sys.executable, "-S", "predict.py", "--check"], cwd=out, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(only_numpy), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: onnxruntime is not installed in this Python")
    assert f"pip install -r {out.resolve() / 'requirements.txt'}" in lines[0]

    config = json.loads((out / "config.json").read_text())
    assert config["scenario"] == "single_stream"
    assert not {"max_batch_size", "max_queue_delay_ms", "batch_policy", "slo_ms"} & set(config)
    assert bundle.open_bundle(out).serving() == {"max_batch_size": 1, "max_queue_delay_ms": 0.0,
                                                 "batch_policy": "idle", "instances": 1}
