"""The model as it is, for a runtime that reads the source model's own format (TensorFlow
reading a ``.keras`` file or a SavedModel): nothing is built, and since the state is then an
artifact no later transform applies (asking such a runtime for int8 or pruning prunes the trial)."""

from __future__ import annotations

from workbench.models import ModelRef
from workbench.variants import Artifact, Transform, register


class Native(Transform):
    name = "native"

    def applies(self, state, params, formats) -> bool:
        return isinstance(state, ModelRef) and state.format in formats

    def apply(self, state, data, params, calibration_samples) -> Artifact:
        path = {"keras": lambda: state.keras_path, "savedmodel": lambda: state.saved_model_path,
                "onnx": lambda: state.onnx_path}[state.format]()
        return Artifact(path, state.format, state.key, tuple(state.meta.get("transforms", ())))


TRANSFORM = register(Native())
