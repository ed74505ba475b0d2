"""A bundle: a directory someone can deploy a trial from, and the one place that writes or reads one.

A bundle holds the artifact, the trial's parameters (``config.json``) and ``bundle.json`` (the
artifact's name, the runtime, the exact session options and the model's inputs). The bundle
``workbench export`` writes (:func:`write_bundle` with the trial's metrics) adds the metrics
(``metrics.json``), a sample input (``sample_input.npy``; ``.npz`` of named arrays for a model
with several inputs), a small labelled eval sample (``check_inputs.np[yz]``,
``check_targets.npy``, ``check.json``), a ``predict.py`` that needs only the runtime's own
package and numpy, and ``requirements.txt`` naming their exact versions. ``predict.py`` opens
the artifact with exactly the session options the trial was measured with: the dict its
runtime plug-in's ``session_options`` returned for the trial, so what ships is what was
measured. A server trial serves a minimal bundle (no metrics: the artifact hard-linked where it can be,
not copied) from a temporary directory.

:func:`open_bundle` reads either. The session is re-created through
:func:`workbench.runtimes.load`, the same call the trial used, so what is served is what was
measured.

A bundle is data, never a decision to run code: whoever hands over a bundle is trusted for the
model's numbers, not for the machine. ``trust_model_code`` (a ``.keras`` Lambda layer runs Python)
comes from the caller of :func:`open_bundle` (``workbench serve --trust-model-code``, or the
experiment of the server trial that wrote it), never from the bundle's ``config.json``; the
artifact ``bundle.json`` names must lie inside the bundle directory, and so must every symbolic
link in it resolve (a link is as good as an absolute path), with no exception: nothing in a
bundle could tell a link the workbench made from a hostile one (a marker or a hash can be
forged), so the workbench makes none. The server trial's minimal bundle holds its artifact as a
hard link to the cached file (no copy, on the cache's file system), else a copy.

Writing never deletes what it did not write: ``.workbench-bundle.json`` lists the files of a
bundle; an existing directory without it (and not empty) is refused, and re-writing over a
bundle removes only the files its marker lists.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Mapping

import numpy as np

from workbench import data as data_mod
from workbench import runtimes
from workbench.config.parameters import serving
from workbench.config.params import TrialParams
from workbench.core.cache import versions
from workbench.core.errors import WorkbenchError
from workbench.data import Dataset, inputs
from workbench.export.predict_template import PREDICT
from workbench.export.quality import ExportError, expected_quality
from workbench.measure.timing import timing_batch
from workbench.variants import Artifact

MARKER = ".workbench-bundle.json"
CHECK_ROWS = 200  # rows of the eval split bundled for --check


SUFFIXES = (".onnx", ".tflite", ".keras", ".xml")


class BundleError(WorkbenchError):
    """The directory given to ``workbench serve`` is not a usable bundle."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    params: TrialParams
    artifact: Artifact
    inputs: list[tuple[str | None, tuple[int, ...], str]]  # (name, sample shape, dtype): inputs.specs

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.inputs[0][1]

    def zeros(self, n: int = 1):
        """``n`` rows of zeros in the model's input form (an array, or a dict by input name)."""
        if len(self.inputs) == 1 and self.inputs[0][0] is None:
            return np.zeros((n, *self.inputs[0][1]), self.inputs[0][2])
        return {name: np.zeros((n, *shape), dtype) for name, shape, dtype in self.inputs}

    def serving(self) -> dict[str, Any]:
        """How ``workbench serve`` batches this bundle unless told otherwise: as its server trial
        was measured; any other trial was measured one batch at a time, never waiting for
        company, so its requests are batched only up to its batch size, without waiting (a
        waited delay doubled a single-stream winner's latency)."""
        p = self.params
        if p.scenario == "server":
            return {"max_batch_size": p.max_batch_size, "max_queue_delay_ms": p.max_queue_delay_ms,
                    "batch_policy": p.batch_policy, "instances": p.instances}
        return {"max_batch_size": p.batch_size, "max_queue_delay_ms": 0.0, "batch_policy": "idle",
                "instances": 1}

    def session(self, threads: int | None = None):
        """A fresh session of the bundle's artifact (``threads`` overrides the intra-op threads)."""
        params = self.params if threads is None else self.params.model_copy(update={"threads": threads})
        return runtimes.load(params, self.artifact)


def _artifact(path: Path, info: dict[str, Any]) -> Path:
    """The bundle's model file (named in ``bundle.json``; else the one ``model.*`` beside it).
    The name must stay inside the bundle: no absolute path, no ``..`` (a bundle must not make
    the server load a model from elsewhere on the machine)."""
    if info.get("artifact"):
        name = info["artifact"]
        rel = PurePath(name) if isinstance(name, str) else None
        if rel is None or rel.is_absolute() or rel.anchor or ".." in rel.parts or "\\" in name:
            raise BundleError(f"{path / 'bundle.json'}: artifact {name!r} is not a path inside the bundle "
                              "(no absolute path, no ..)")
        if not (path / name).exists():
            raise BundleError(f"{path / 'bundle.json'}: its artifact {info['artifact']} is missing")
        return path / info["artifact"]
    found = sorted(p for p in path.iterdir() if p.name.startswith("model") and p.suffix in SUFFIXES)
    if not found:
        raise BundleError(f"{path}: no model file in the bundle (model.onnx, model.tflite, model.keras)")
    return found[0]


def _links_stay_inside(path: Path) -> None:
    """Refuse a symbolic link anywhere in the bundle that resolves outside it (or nowhere)."""
    root = path.resolve()
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            link = Path(folder) / name
            if link.is_symlink() and not link.resolve().is_relative_to(root):
                raise BundleError(f"{link}: a symbolic link to {os.readlink(link)}, outside the bundle "
                                  "(copy the file into the bundle)")


def open_bundle(path: str | Path, trust_model_code: bool = False) -> Bundle:
    """Read ``config.json`` and locate the artifact; a bad bundle is a one-line error.

    ``trust_model_code`` is the operator's word (``workbench serve --trust-model-code``): the
    bundle's own ``config.json`` value is ignored, so a bundle cannot decide to run code. A
    symbolic link resolving outside the bundle is refused, so it cannot read elsewhere either."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: not a bundle (no config.json; write one with `workbench export`)")
    _links_stay_inside(path)
    config, info = _json(path / "config.json"), {}
    if (path / "bundle.json").is_file():
        info = _json(path / "bundle.json")
    if not isinstance(config, dict) or not isinstance(info, dict):
        raise BundleError(f"{path}: config.json and bundle.json must each hold a JSON object")
    params = TrialParams.parse({**config, "trust_model_code": bool(trust_model_code)})
    file = _artifact(path, info)
    fmt = "savedmodel" if file.is_dir() else file.suffix.lstrip(".")
    artifact = Artifact(file, fmt, "bundle", ())
    specs = info.get("inputs") or _input_specs(path, params)
    return Bundle(path, params, artifact, [(n, tuple(int(d) for d in shape), str(dt)) for n, shape, dt in specs])


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def _input_specs(path: Path, params) -> list:
    """The model's inputs: from the data set the trial used (a single-input bundle without it:
    from its sample input)."""
    try:
        return data_mod.load(params.data, params.task).inputs
    except WorkbenchError:
        if (path / "sample_input.npz").is_file():  # several named inputs
            with np.load(path / "sample_input.npz") as z:
                return [(k, tuple(z[k].shape[1:]), str(z[k].dtype)) for k in z.files]
        if not (path / "sample_input.npy").is_file():
            raise
        x = np.load(path / "sample_input.npy", mmap_mode="r")
        return [(None, tuple(x.shape[1:]), str(x.dtype))]


def check_out(out: Path) -> list[str]:
    """The files of the previous bundle in ``out`` (none: missing or empty); refuses anything
    else (a file, a directory export did not write, a marker it did not write)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a directory (choose a directory)")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise ExportError(f"--out {out}: exists and is not a bundle written by workbench export "
                              f"(no {MARKER}); choose a new or empty directory")
        return []
    try:
        files = json.loads(marker.read_text())["files"]
        ok = isinstance(files, list) and all(isinstance(f, str) and f and "/" not in f and "\\" not in f
                                             and f not in (".", "..") for f in files)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ExportError(f"--out {out}: {MARKER} is not a marker workbench wrote (unreadable "
                          "file list); remove the directory yourself or choose another")
    return files


def record(out: Path, name: str) -> None:
    """Add ``name`` (a file another part of workbench wrote into the bundle ``out``, e.g. a
    KServe manifest) to the marker, so that a re-export replaces it too."""
    marker = out / MARKER
    info = json.loads(marker.read_text())
    if name not in info["files"]:
        info["files"].append(name)
        marker.write_text(json.dumps(info, indent=2))


def prepare_out(out: Path) -> None:
    """Make ``out`` ready for a bundle without deleting anything export did not write: a missing
    or empty directory is used; a previous bundle loses only the files its marker lists;
    anything else is refused."""
    files = check_out(out)
    for name in files:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (out / MARKER).unlink(missing_ok=True)  # checked above: one export wrote


def write_bundle(out: Path, params: TrialParams, artifact: Artifact, data: Dataset,
                 metrics: Mapping[str, Any] | None = None, title: Mapping[str, Any] | None = None) -> Path:
    """Write the bundle of a trial to ``out`` (checked with :func:`prepare_out` first).

    With ``metrics`` (a completed trial's, as ``trial.run`` returns them) it is the bundle
    someone deploys from: the artifact copied, the metrics, the sample and check files, the
    quality measured on them, ``predict.py`` (``title``: trial, experiment, study for its
    docstring). Without, the serving minimum a server trial serves from a temporary directory:
    parameters, ``bundle.json`` and the artifact linked, not copied.
    """
    prepare_out(out)
    runtime = runtimes.get(params.runtime)
    src = Path(artifact.path).resolve()
    name = src.name if src.is_dir() else f"model{src.suffix}"
    options = runtime.session_options(params)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def wrote(fname: str) -> Path:
        written.append(fname)
        (out / MARKER).write_text(json.dumps({"workbench_bundle": 1, "files": written}, indent=2))
        return out / fname

    (out / MARKER).write_text(json.dumps({"workbench_bundle": 1, "files": written}, indent=2))
    if metrics is None:
        _link_or_copy(src, wrote(name))
    elif src.is_dir():
        shutil.copytree(src, wrote(name))
    else:
        shutil.copy2(src, wrote(name))
    wrote("config.json").write_text(json.dumps(measured_params(params), indent=2, sort_keys=True))
    wrote("bundle.json").write_text(json.dumps({
        "runtime": params.runtime, "artifact": name, "session_options": options,
        "inputs": [[n, list(s), d] for n, s, d in data.inputs]}, indent=2, sort_keys=True))
    if metrics is None:
        return out
    n = min(CHECK_ROWS, inputs.rows(data.x_eval))
    several = isinstance(data.x_eval, Mapping)
    ext = ".npz" if several else ".npy"
    wrote("metrics.json").write_text(json.dumps(dict(metrics), indent=2, sort_keys=True, default=str))
    _save_inputs(wrote("sample_input" + ext), timing_batch(data.x_eval, params.batch_size))
    _save_inputs(wrote("check_inputs" + ext), inputs.cast_float32(inputs.take(data.x_eval, 0, n)))
    np.save(wrote("check_targets.npy"), np.asarray(data.y_eval[:n]))
    expected = expected_quality(out, params.model_dump(), src, artifact.format)
    wrote("check.json").write_text(json.dumps({
        "task": params.task, "batch_size": params.batch_size, "expected": expected, "inputs": "check_inputs" + ext,
        "trial_p50_ms": metrics.get("latency_p50_ms"),
        "measurement": {k: getattr(params, k) for k in ("warmup", "min_runs", "min_seconds", "max_seconds")},
    }, indent=2))
    wrote("requirements.txt").write_text(requirements(runtime.packages))
    title = title or {"trial": "-", "experiment": "-", "study": "-"}
    wrote("predict.py").write_text(PREDICT.format(
        **title, label=metrics.get("label", ""), runtime=params.runtime, options=repr(options),
        load=runtime.bundle_loader(name), helpers=_helpers(),
        sample_ndim=({k: v.ndim - 1 for k, v in data.x_eval.items()} if several else data.x_eval.ndim - 1)))
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """``src`` at ``dst`` without a copy where the file system allows (a hard link: a file of the
    bundle like any other, not a symbolic link that :func:`open_bundle` refuses), else copied."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system, or links not allowed here
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(str(src), str(dst))


def requirements(packages: tuple[str, ...]) -> str:
    """``requirements.txt`` of a bundle: numpy and the runtime's packages at the exact versions
    the trial ran with (``pip install -r requirements.txt`` gives predict.py what it needs)."""
    found = versions("numpy", *packages)
    return "".join(f"{name}=={v}\n" for name, v in found.items() if v != "absent")


def measured_params(params: TrialParams) -> dict[str, Any]:
    """The trial's parameters without the serving settings it was not measured with (an
    in-process trial has no batcher, no SLO): ``config.json`` names only what was measured."""
    p = params.model_dump()
    if p.get("scenario") == "server":
        return p
    unmeasured = {q.name for q in serving()} | {"slo_ms", "slo_percentile"}
    return {k: v for k, v in p.items() if k not in unmeasured}


def _save_inputs(path: Path, x) -> None:
    if isinstance(x, Mapping):
        np.savez(path, **x)
    else:
        np.save(path, x)


def _helpers() -> str:
    """The source of the input helpers predict.py shares with the workbench (numpy and re only)."""
    fns = (inputs.rows, inputs.take, inputs.repeat_to, inputs.cast_float32, inputs.base_name,
           inputs.by_runtime_names)
    return "\n\n".join(inspect.getsource(f) for f in fns)
