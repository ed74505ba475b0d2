"""Models: builtin Keras 3 models trained on first use, and user model files.

A model is resolved to a :class:`ModelRef` without importing TensorFlow when it is already in
the cache; its directory holds the model (``model.keras``, ``saved_model/`` or ``model.onnx``,
see ``meta["format"]``), ``meta.json`` (fp32 quality on the eval split, input shape, format) and
``reference.npy`` (the fp32 outputs on the eval split, used for agreement and for the export
equivalence check).

User models (``model:`` a ``.keras`` file, a SavedModel directory or an ``.onnx`` file) are
copied into a cache entry keyed by the hash of their content and of the data, so editing the
file in place can never serve stale numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workbench import cache
from workbench.data import Dataset, file_hash
from workbench.errors import DataError, ModelError

TF_PACKAGES = ("tensorflow", "keras")


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

    def reference(self) -> np.ndarray:
        return np.load(self.dir / "reference.npy")

    def load_keras(self):
        import keras

        # A model that needed trust_model_code was accepted by resolve() under that flag.
        return keras.saving.load_model(self.keras_path, safe_mode=not self.meta.get("unsafe", False))


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


def _digits_mlp(input_shape: tuple[int, ...], n_classes: int):
    """Dense only (MatMul in ONNX): the model where int4 weight-only quantization applies."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dense(512, activation="relu"),
        layers.Dense(512, activation="relu"),
        layers.Dense(256, activation="relu"),
        layers.Dense(n_classes, activation="softmax"),
    ], name="digits_mlp")


def _cnn32(input_shape: tuple[int, ...], n_classes: int):
    """Six convolutions on 32x32x3: a few ms per image on one CPU core, so quantization and
    channel pruning change latency measurably."""
    import keras
    from keras import layers

    blocks = []
    for width in (64, 128, 256):
        blocks += [layers.Conv2D(width, 3, padding="same", activation="relu"),
                   layers.Conv2D(width, 3, padding="same", activation="relu")]
        if width != 256:
            blocks.append(layers.MaxPooling2D())
    return keras.Sequential([keras.Input(input_shape), *blocks, layers.GlobalAveragePooling2D(),
                             layers.Dense(n_classes, activation="softmax")], name="cnn32")


# name -> (builder, epochs, data set it is trained on). Bump RECIPE_VERSION when a builder changes.
BUILTIN: dict[str, tuple[Callable, int, str]] = {
    "digits_cnn": (_digits_cnn, 20, "digits"),
    "digits_mlp": (_digits_mlp, 15, "digits"),
    "cnn32": (_cnn32, 6, "digits32"),
}
RECIPE_VERSION = 1
TRAIN_SEED = 0


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


def _train_builtin(name: str, data: Dataset) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        import keras

        builder, epochs, _ = BUILTIN[name]
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
        **quality(reference, data),
        "task": data.task,
        "input_shape": list(data.input_shape),
        "params": int(model.count_params()),
        "name": model.name,
        **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def resolve(spec: str, data: Dataset, trust_model_code: bool = False) -> ModelRef:
    """Find (or train, once) the builtin model ``spec``, or load the user model file ``spec``.

    ``trust_model_code`` lets a ``.keras`` file with Python code in it (a ``Lambda`` layer) be
    deserialised; without it such a model is refused, since loading it runs arbitrary code.
    """
    if spec in BUILTIN:
        k = cache.key("builtin", spec, RECIPE_VERSION, TRAIN_SEED, data.key, data.task,
                      cache.versions(*TF_PACKAGES))
        d = cache.entry("models", k, _train_builtin(spec, data))
        name = spec
    elif Path(spec).suffix in (".keras", ".onnx", ".h5") or Path(spec).is_dir() or "/" in spec:
        from workbench import usermodel

        path = Path(spec)
        fmt = usermodel.detect(path)
        k = cache.key("user", usermodel.RECIPE, fmt, file_hash(path), data.key, data.task,
                      cache.versions(*usermodel.PACKAGES[fmt]))
        d = cache.entry("models", k, lambda out: usermodel.build(path, fmt, data, out, trust_model_code))
        name = path.name
    else:
        raise ModelError(f"model: unknown model {spec!r} (builtin: {', '.join(BUILTIN)}; or a path "
                         "to a .keras file, a SavedModel directory or an .onnx file)")
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("unsafe") and not trust_model_code:
        raise ModelError(f"{spec}: {meta['unsafe']}; refusing to load it "
                         "(set trust_model_code: true in the experiment if you trust this file)")
    if tuple(meta["input_shape"]) != data.input_shape:
        raise DataError(f"model {name} expects inputs of shape {tuple(meta['input_shape'])} "
                        f"but data {data.name} has {data.input_shape}")
    return ModelRef(name, k, d, meta)
