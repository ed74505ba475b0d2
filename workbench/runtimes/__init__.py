"""Runtimes behind one Session interface.

``load(params, artifact)`` returns a :class:`Session`: ``run(batch) -> outputs`` for a fixed
numpy batch, ``providers`` (what is actually active, checked after creation), ``load_ms`` and
``close()``. A requested provider or device that is not active makes the trial *pruned with
the reason*: a silent fallback to CPU would make the numbers a lie.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from workbench.errors import TrialPruned


class Session(Protocol):
    providers: list[str]
    load_ms: float

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


_MODULES = {
    "onnxruntime": "workbench.runtimes.ort",
    "openvino": "workbench.runtimes.openvino",
    "tensorflow": "workbench.runtimes.tensorflow",
    "litert": "workbench.runtimes.litert",
}
# Which artifact formats each runtime reads.
FORMATS = {"onnxruntime": ("onnx",), "openvino": ("onnx",), "tensorflow": ("keras", "savedmodel"),
           "litert": ("tflite",)}


def load(params, artifact) -> Session:
    """Open ``artifact`` in the runtime the trial asks for, with its threads and provider."""
    if params.runtime not in _MODULES:
        raise TrialPruned(f"runtime {params.runtime} is not available in this build of workbench")
    if artifact.format not in FORMATS[params.runtime]:
        raise TrialPruned(f"runtime {params.runtime} cannot run a {artifact.format} artifact")
    module = importlib.import_module(_MODULES[params.runtime])
    return module.open_session(artifact.path, params)
