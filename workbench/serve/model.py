"""A bundle opened for serving: the session exactly as the trial measured it, plus what the
Open Inference Protocol's model metadata needs (input shape, datatype).

A bundle is a directory written by ``workbench export``: ``config.json`` holds the trial's
parameters (runtime, provider, threads, session options), the artifact sits beside it. The
session is re-created through :func:`workbench.runtimes.load`, the same call the trial used,
so what is served is what was measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

ARTIFACT_NAMES = {"model.onnx": "onnx", "model.keras": "keras", "model.tflite": "tflite",
                  "saved_model": "savedmodel"}


class BundleError(WorkbenchError):
    """The directory given to ``workbench serve`` is not a usable bundle."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    params: Any  # workbench.params.TrialParams
    artifact: Any  # workbench.variants.Artifact
    sample_shape: tuple[int, ...]

    def session(self, threads: int | None = None):
        """A fresh session of the bundle's artifact (``threads`` overrides the intra-op threads)."""
        from workbench import runtimes

        params = self.params if threads is None else self.params.model_copy(update={"threads": threads})
        return runtimes.load(params, self.artifact)


def _artifact_file(path: Path, metrics: dict[str, Any]) -> tuple[Path, str]:
    fmt = metrics.get("artifact_format")
    for name, kind in ARTIFACT_NAMES.items():
        if (path / name).exists():
            return path / name, fmt or kind
    for child in sorted(path.iterdir()):
        if child.suffix in (".onnx", ".tflite", ".keras"):
            return child, fmt or child.suffix[1:]
    raise BundleError(f"{path}: no model file in the bundle (expected one of {', '.join(ARTIFACT_NAMES)})")


def open_bundle(path: str | Path) -> Bundle:
    """Read ``config.json`` and locate the artifact; a bad bundle is a one-line error."""
    from workbench.params import TrialParams
    from workbench.variants import Artifact

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: not a bundle (no config.json; write one with `workbench export`)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path / 'config.json'}: not valid JSON ({err.msg}, line {err.lineno})") from None
    metrics = {}
    if (path / "metrics.json").is_file():
        metrics = json.loads((path / "metrics.json").read_text())
    known = set(TrialParams.model_fields)
    params = TrialParams.parse({k: v for k, v in config.items() if k in known})
    file, fmt = _artifact_file(path, metrics)
    artifact = Artifact(file, fmt, "bundle", tuple(metrics.get("transforms", ())))
    shape = config.get("input_shape") or metrics.get("input_shape")
    if shape is None:
        shape = _sample_shape(path, params)
    return Bundle(path, params, artifact, tuple(int(s) for s in shape))


def _sample_shape(path: Path, params) -> tuple[int, ...]:
    """One sample's shape: from the bundle's sample input, else from the data set."""
    sample = path / "sample_input.npy"
    if sample.is_file():
        return tuple(np.load(sample, mmap_mode="r").shape[1:])
    from workbench import data as data_mod

    return data_mod.load(params.data, params.task).input_shape


def write_bundle(params, artifact, out: Path, sample_shape: tuple[int, ...]) -> Path:
    """A minimal bundle for a server trial: the trial's parameters and a link to its artifact."""
    out.mkdir(parents=True, exist_ok=True)
    config = {**params.model_dump(), "input_shape": list(sample_shape)}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "metrics.json").write_text(json.dumps({"artifact_format": artifact.format,
                                                  "transforms": list(artifact.transforms)}))
    name = {"onnx": "model.onnx", "keras": "model.keras", "tflite": "model.tflite",
            "savedmodel": "saved_model"}.get(artifact.format, artifact.path.name)
    link = out / name
    if not link.exists():
        link.symlink_to(Path(artifact.path).resolve())
    return out
