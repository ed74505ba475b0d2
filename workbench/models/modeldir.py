"""A model cache directory: what it holds, how it is written, and how its outputs are scored.

Shared by :mod:`workbench.models.builtin` (builtin models, resolution) and :mod:`workbench.models.user`
(bring-your-own files) and the Keras variants (pruning, distillation), so that none of them
has to import another: the zoo imports the user-model loader, never the other way round.

A directory holds the model (``model.keras``, ``saved_model/`` or ``model.onnx``, see
``meta["format"]``), ``meta.json`` (fp32 quality on the eval split, inputs, format) and
``reference.npy`` (the fp32 outputs on the eval split, used for agreement and for the export
equivalence check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data import Dataset

EVAL_BATCH = 256


@dataclass(frozen=True)
class ModelRef:
    name: str
    key: str
    dir: Path
    meta: dict[str, Any]

    @property
    def format(self) -> str:
        """How the fp32 model is stored: "keras" | "savedmodel" | "onnx"."""
        return self.meta.get("format", "keras")

    @property
    def keras_path(self) -> Path:
        return self.dir / "model.keras"

    @property
    def saved_model_path(self) -> Path:
        return self.dir / "saved_model"

    @property
    def onnx_path(self) -> Path:
        return self.dir / "model.onnx"

    @property
    def task(self) -> str:
        return self.meta.get("task", "classification")

    @property
    def accuracy(self) -> float:
        """fp32 accuracy (percent) of the unmodified model on the eval split (classification)."""
        return float(self.meta["accuracy"])

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The model's inputs as ``{"name", "shape", "dtype"}`` (sample shape, without batch)."""
        return self.meta.get("inputs") or [{"name": None, "shape": self.meta["input_shape"],
                                            "dtype": "float32"}]

    def reference(self) -> np.ndarray:
        return np.load(self.dir / "reference.npy")

    def load_keras(self):
        import keras

        # A model that needed trust_model_code was accepted by resolve() under that flag.
        return keras.saving.load_model(self.keras_path, safe_mode=not self.meta.get("unsafe", False))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(outputs, axis=-1) == labels) * 100.0)


def quality(outputs: np.ndarray, data: Dataset) -> dict[str, float]:
    """The task's quality metrics: top-1 ``accuracy`` (percent) for classification, ``mae`` and
    ``rmse`` (in the target's units) for regression."""
    if data.task == "regression":
        err = np.asarray(outputs, np.float64).reshape(len(data.y_eval), -1) - \
            np.asarray(data.y_eval, np.float64).reshape(len(data.y_eval), -1)
        return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}
    return {"accuracy": accuracy(outputs, data.y_eval)}


def data_inputs(data: Dataset) -> list[dict[str, Any]]:
    """The data set's inputs in the form ``meta["inputs"]`` records them."""
    return [{"name": n, "shape": list(s), "dtype": d} for n, s, d in data.inputs]


def keras_inputs(model) -> list[dict[str, Any]]:
    """A Keras model's inputs in the form ``meta["inputs"]`` records them."""
    return [{"name": t.name, "shape": [d if d is None else int(d) for d in t.shape[1:]],
             "dtype": str(t.dtype)} for t in model.inputs]


def predict(model, x) -> np.ndarray:
    """A Keras model's outputs on ``x`` (an array or a dict of named arrays) as float32."""
    return np.asarray(model.predict(x, batch_size=EVAL_BATCH, verbose=0), dtype=np.float32)


def save(model, data: Dataset, out: Path, **extra: Any) -> None:
    """Write a Keras model directory: model.keras, its eval outputs (reference.npy), meta.json."""
    model.save(out / "model.keras")
    reference = predict(model, data.x_eval)
    np.save(out / "reference.npy", reference)
    meta = {
        **quality(reference, data),
        "task": data.task,
        "input_shape": list(data.input_shape),
        "inputs": keras_inputs(model),
        "params": int(model.count_params()),
        "name": model.name,
        **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
