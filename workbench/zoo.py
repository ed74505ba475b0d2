"""Models: builtin Keras 3 models trained on first use, and user model files.

A model is resolved to a :class:`ModelRef` without importing TensorFlow when it is already in
the cache; its directory holds ``model.keras``, ``meta.json`` (fp32 accuracy, input shape) and
``reference.npy`` (the fp32 Keras outputs on the eval split, used for agreement and for the
export equivalence check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workbench import cache
from workbench.data import Dataset
from workbench.errors import ModelError

TF_PACKAGES = ("tensorflow", "keras")


@dataclass(frozen=True)
class ModelRef:
    name: str
    key: str
    dir: Path
    meta: dict[str, Any]

    @property
    def keras_path(self) -> Path:
        return self.dir / "model.keras"

    @property
    def accuracy(self) -> float:
        """fp32 accuracy (percent) of the unmodified model on the eval split."""
        return float(self.meta["accuracy"])

    def reference(self) -> np.ndarray:
        return np.load(self.dir / "reference.npy")

    def load_keras(self):
        import keras

        return keras.saving.load_model(self.keras_path, safe_mode=True)


def _digits_cnn(input_shape: tuple[int, ...], n_classes: int):
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(n_classes, activation="softmax"),
    ], name="digits_cnn")


# name -> (builder, epochs). Bump the recipe version in the key when a builder changes.
BUILTIN: dict[str, tuple[Callable, int]] = {"digits_cnn": (_digits_cnn, 20)}
RECIPE_VERSION = 1
TRAIN_SEED = 0


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(outputs, axis=-1) == labels) * 100.0)


def _train_builtin(name: str, data: Dataset) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        import keras

        builder, epochs = BUILTIN[name]
        keras.utils.set_random_seed(TRAIN_SEED)
        n_classes = int(max(data.y_eval.max(), data.y_train.max()) + 1)
        model = builder(data.input_shape, n_classes)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
        save(model, data, out)

    return build


def save(model, data: Dataset, out: Path, **extra: Any) -> None:
    """Write a model directory: model.keras, its eval outputs (reference.npy) and meta.json."""
    model.save(out / "model.keras")
    reference = model.predict(data.x_eval, batch_size=256, verbose=0).astype(np.float32)
    np.save(out / "reference.npy", reference)
    meta = {
        "accuracy": accuracy(reference, data.y_eval),
        "input_shape": list(data.input_shape),
        "params": int(model.count_params()),
        "name": model.name,
        **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def resolve(spec: str, data: Dataset) -> ModelRef:
    """Find (or train, once) the model named by ``spec`` for ``data``."""
    if spec in BUILTIN:
        k = cache.key("builtin", spec, RECIPE_VERSION, TRAIN_SEED, data.key, cache.versions(*TF_PACKAGES))
        d = cache.entry("models", k, _train_builtin(spec, data))
    else:
        raise ModelError(f"model: unknown model {spec!r} (builtin: {', '.join(BUILTIN)})")
    meta = json.loads((d / "meta.json").read_text())
    if tuple(meta["input_shape"]) != data.input_shape:
        raise ModelError(f"model {spec!r} expects input shape {tuple(meta['input_shape'])} "
                         f"but data {data.name!r} has {data.input_shape}")
    return ModelRef(spec, k, d, meta)
