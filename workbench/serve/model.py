"""A bundle opened for serving: the session exactly as the trial measured it, plus what the
Open Inference Protocol's model metadata needs (input names, shapes, datatypes).

A bundle is a directory written by ``workbench export``: ``config.json`` holds the trial's
parameters (runtime, provider, threads, session options), ``bundle.json`` names the artifact
beside it. The session is re-created through :func:`workbench.runtimes.load`, the same call the
trial used, so what is served is what was measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

SUFFIXES = (".onnx", ".tflite", ".keras", ".xml")


class BundleError(WorkbenchError):
    """The directory given to ``workbench serve`` is not a usable bundle."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    params: Any  # workbench.params.TrialParams
    artifact: Any  # workbench.variants.Artifact
    inputs: list[tuple[str | None, tuple[int, ...], str]]  # (name, sample shape, dtype): inputs.specs

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.inputs[0][1]

    def zeros(self, n: int = 1):
        """``n`` rows of zeros in the model's input form (an array, or a dict by input name)."""
        if len(self.inputs) == 1 and self.inputs[0][0] is None:
            return np.zeros((n, *self.inputs[0][1]), self.inputs[0][2])
        return {name: np.zeros((n, *shape), dtype) for name, shape, dtype in self.inputs}

    def session(self, threads: int | None = None):
        """A fresh session of the bundle's artifact (``threads`` overrides the intra-op threads)."""
        from workbench import runtimes

        params = self.params if threads is None else self.params.model_copy(update={"threads": threads})
        return runtimes.load(params, self.artifact)


def _artifact(path: Path, info: dict[str, Any]) -> Path:
    """The bundle's model file (named in ``bundle.json``; else the one ``model.*`` beside it)."""
    if info.get("artifact"):
        if not (path / info["artifact"]).exists():
            raise BundleError(f"{path / 'bundle.json'}: its artifact {info['artifact']} is missing")
        return path / info["artifact"]
    found = sorted(p for p in path.iterdir() if p.name.startswith("model") and p.suffix in SUFFIXES)
    if not found:
        raise BundleError(f"{path}: no model file in the bundle (model.onnx, model.tflite, model.keras)")
    return found[0]


def open_bundle(path: str | Path) -> Bundle:
    """Read ``config.json`` and locate the artifact; a bad bundle is a one-line error."""
    from workbench.params import TrialParams
    from workbench.variants import Artifact

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: not a bundle (no config.json; write one with `workbench export`)")
    config, info = _json(path / "config.json"), {}
    if (path / "bundle.json").is_file():
        info = _json(path / "bundle.json")
    params = TrialParams.parse(config)
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
    from workbench import data as data_mod

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


def write_bundle(params, artifact, out: Path, inputs: list) -> Path:
    """A minimal bundle for a server trial: the trial's parameters and a link to its artifact
    (``workbench export`` writes the full one; both are read by :func:`open_bundle`)."""
    out.mkdir(parents=True, exist_ok=True)
    src = Path(artifact.path).resolve()
    name = src.name if src.is_dir() else f"model{src.suffix}"
    (out / "config.json").write_text(json.dumps(params.model_dump(), indent=2, sort_keys=True))
    (out / "bundle.json").write_text(json.dumps({"runtime": params.runtime, "artifact": name,
                                                 "inputs": [[n, list(s), d] for n, s, d in inputs]}, indent=2))
    if not (out / name).exists():
        (out / name).symlink_to(src)
    return out
