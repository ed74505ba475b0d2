"""``workbench export``: the chosen trial as a directory someone can deploy from.

A bundle holds the artifact, the trial's parameters (``config.json``), its metrics
(``metrics.json``), a sample input (``sample_input.npy``) and a ``predict.py`` that needs only
the runtime's own package: it opens the artifact with exactly the runtime options the trial was
measured with (provider, threads, graph optimization), so what ships is what was measured.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError


class ExportError(WorkbenchError):
    """The trial to export does not exist, did not complete, or its artifact is gone."""


_LOAD = {
    "onnxruntime": '''import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = {threads}
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(HERE / "{artifact}"), sess_options=opts, providers=["{provider}"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {{name: x}})[0]''',
    "openvino": '''import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(HERE / "{artifact}"), "{device}",
                                  {{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": {threads},
                                   "INFERENCE_PRECISION_HINT": "f32"}})
    req = compiled.create_infer_request()

    def run(x):
        req.infer({{0: x}})
        return req.get_output_tensor(0).data.copy()
    return run''',
    "tensorflow": '''import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads({threads})
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.saving.load_model(HERE / "{artifact}", safe_mode=True)
    return lambda x: model(x, training=False).numpy()''',
}

PREDICT = '''"""Run the exported model on a .npy input: python predict.py INPUT.npy [--out OUTPUT.npy]

Trial {trial} of {experiment}/{study}: {label}.
Runtime options are the ones the trial was measured with (see config.json, metrics.json).
"""

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load():
    """A function from a float32 batch to the model's outputs."""
    {load}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help=".npy array: a batch (or a single sample) of model inputs")
    ap.add_argument("--out", help="write the outputs here (.npy)")
    args = ap.parse_args()
    x = np.load(args.input).astype(np.float32)
    if x.ndim == {sample_ndim}:
        x = x[None]  # a single sample
    y = np.asarray(load()(np.ascontiguousarray(x)))
    if args.out:
        np.save(args.out, y)
    print(f"outputs {{y.shape}}, top-1: {{y.argmax(-1).tolist()}}")


if __name__ == "__main__":
    main()
'''


def _trial_metrics(run_dir: Path, number: str) -> dict[str, Any]:
    import optuna

    from workbench import report
    from workbench.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = report._run_info(run_dir)
    study = optuna.load_study(study_name=info["study"], storage=open_storage(info["storage"]))
    for t in study.get_trials(deepcopy=False):
        if str(t.number) == str(number):
            if t.state.name != "COMPLETE" or "metrics" not in t.user_attrs:
                raise ExportError(f"{run_dir}: trial {number} is {t.state.name}, not a completed trial")
            return {**t.user_attrs["metrics"], "params": {**t.user_attrs.get("params", {}),
                                                          **t.user_attrs["metrics"].get("params", {})}}
    raise ExportError(f"{run_dir}: no trial {number} in study {info['study']}")


def export(run_dir: str | Path, trial: str | int | None = None, out: str | Path | None = None) -> Path:
    """Write the bundle of ``trial`` (default: the recommended one in ``best.json``); returns its directory."""
    run_dir = Path(run_dir)
    if trial is None:
        best_path = run_dir / "best.json"
        if not best_path.exists():
            raise ExportError(f"{run_dir}: no best.json (run `workbench report {run_dir}` first, or pass --trial)")
        trial = json.loads(best_path.read_text()).get("trial")
        if trial is None:
            raise ExportError(f"{run_dir}: best.json recommends no trial (pass --trial)")
    metrics = _trial_metrics(run_dir, str(trial))
    params = metrics["params"]
    artifact = Path(metrics.get("artifact") or "")
    if not metrics.get("artifact") or not artifact.exists():
        artifact = _rebuild(params)
    out = Path(out) if out else run_dir / "export" / f"trial-{trial}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    name = "model.keras" if metrics.get("artifact_format") == "keras" else "model.onnx"
    if artifact.is_dir():
        shutil.copytree(artifact, out / artifact.name)
        name = artifact.name
    else:
        shutil.copy2(artifact, out / name)
    (out / "config.json").write_text(json.dumps(params, indent=2, sort_keys=True))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    sample_ndim = _write_sample(params, out / "sample_input.npy")
    runtime = params.get("runtime", "onnxruntime")
    if runtime not in _LOAD:
        raise ExportError(f"trial {trial}: no predict.py template for runtime {runtime}")
    provider = params.get("provider", "CPUExecutionProvider")
    device = "CPU" if provider in ("CPUExecutionProvider", "CPU", "default") else provider
    load = _LOAD[runtime].format(artifact=name, threads=int(params.get("threads", 1)),
                                 provider=provider, device=device)
    info = json.loads((run_dir / "run.json").read_text())
    (out / "predict.py").write_text(PREDICT.format(
        trial=trial, experiment=info["experiment"], study=info["study"], label=metrics.get("label", ""),
        load=load, sample_ndim=sample_ndim if sample_ndim is not None else -1))
    return out


def _rebuild(params: dict[str, Any]) -> Path:
    """The artifact from the recorded parameters (its cache entry was removed or is elsewhere)."""
    from workbench import trial
    from workbench.params import TrialParams

    return trial.artifact_for(TrialParams.parse(params))[2].path


def _write_sample(params: dict[str, Any], path: Path) -> int | None:
    """A few real eval samples as a ready input; returns the number of dims of one sample."""
    try:
        from workbench import data as data_mod
        from workbench.trial import timing_batch

        data = data_mod.load(params["data"])
    except Exception:  # noqa: BLE001 - the bundle is still usable with the user's own input
        return None
    import numpy as np

    np.save(path, timing_batch(data.x_eval, int(params.get("batch_size", 1))))
    return data.x_eval.ndim - 1
