"""Models: builtin Keras 3 models trained on first use, and user model files.

A model is resolved to a :class:`~workbench.models.modeldir.ModelRef` without importing TensorFlow
when it is already in the cache; what its directory holds is described in
:mod:`workbench.models.modeldir`.

User models (``model:`` a ``.keras`` file, a SavedModel directory or an ``.onnx`` file) are
copied into a cache entry keyed by the hash of their content and of the data, so editing the
file in place can never serve stale numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from workbench.core import cache
from workbench.core.cache import file_hash
from workbench.core.errors import ModelError
from workbench.data import TEXT_VOCAB, Dataset
from workbench.models import user
from workbench.models.modeldir import ModelRef, save

TF_PACKAGES = ("tensorflow", "keras")


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


def _text_transformer(input_shape: tuple[int, ...], n_classes: int):
    """A small transformer classifier on token ids with a padding mask (two int32 inputs):
    embedding + learned positions, one pre-norm self-attention block (MultiHeadAttention with
    the padding mask) and feed-forward, masked mean pooling, softmax head. Its time goes into
    MatMuls (attention projections, feed-forward), unlike the CNNs, which are Conv-bound."""
    import keras
    from keras import layers, ops

    seq_len, width, heads = int(input_shape[0]), 64, 4
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    mask = keras.Input((seq_len,), dtype="int32", name="mask")
    # positions computed from the input (a constant arange would be captured by the exported
    # graph as an extra input)
    positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1
    h = layers.Embedding(TEXT_VOCAB, width)(tokens) + layers.Embedding(seq_len, width)(positions)
    fmask = ops.cast(mask, "float32")
    attend = ops.cast(ops.expand_dims(fmask, 1) * ops.expand_dims(fmask, 2), "bool")
    a = layers.LayerNormalization()(h)
    h = h + layers.MultiHeadAttention(heads, width // heads)(a, a, attention_mask=attend)
    f = layers.LayerNormalization()(h)
    h = h + layers.Dense(width)(layers.Dense(4 * width, activation="relu")(f))
    w = ops.expand_dims(fmask, -1)
    pooled = ops.sum(h * w, axis=1) / ops.maximum(ops.sum(w, axis=1), 1.0)
    x = layers.Dense(width, activation="relu")(pooled)
    out = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model([tokens, mask], out, name="text_transformer")


# name -> (builder, epochs, data set it is trained on). Bump RECIPE_VERSION when a builder changes.
BUILTIN: dict[str, tuple[Callable, int, str]] = {
    "digits_cnn": (_digits_cnn, 20, "digits"),
    "digits_mlp": (_digits_mlp, 15, "digits"),
    "cnn32": (_cnn32, 6, "digits32"),
    "text_transformer": (_text_transformer, 8, "text"),
}
RECIPE_VERSION = 1
# Per-model recipe versions, appended to that model's cache key only (bumping RECIPE_VERSION
# would retrain every builtin model).
MODEL_RECIPES: dict[str, int] = {"text_transformer": 3}
TRAIN_SEED = 0


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


def resolve(spec: str, data: Dataset, trust_model_code: bool = False,
            output: str | int = 0) -> ModelRef:
    """Find (or train, once) the builtin model ``spec``, or load the user model file ``spec``.

    ``trust_model_code`` lets a ``.keras`` file with Python code in it (a ``Lambda`` layer) be
    deserialised; without it such a model is refused, since loading it runs arbitrary code.
    ``output`` (name or index) chooses the scored output of a model with several.
    """
    if spec in BUILTIN:
        if output not in (0, "0"):
            raise ModelError(f"output: the builtin model {spec} has one output (index 0), "
                             f"got {output!r}")
        k = cache.key("builtin", spec, RECIPE_VERSION, TRAIN_SEED, data.key, data.task,
                      cache.versions(*TF_PACKAGES), *([MODEL_RECIPES[spec]] if spec in MODEL_RECIPES else []))
        d = cache.entry("models", k, _train_builtin(spec, data))
        name = spec
    elif Path(spec).suffix in (".keras", ".onnx", ".h5") or Path(spec).is_dir() or "/" in spec:
        path = Path(spec).absolute()  # cache builders run in a scratch working directory
        fmt = user.detect(path)
        k = cache.key("user", user.RECIPE, fmt, file_hash(path), data.key, data.task,
                      str(output), cache.versions(*user.PACKAGES[fmt]))
        d = cache.entry("models", k, lambda out: user.build(path, fmt, data, out, trust_model_code,
                                                                 output))
        name = path.name
    else:
        raise ModelError(f"model: unknown model {spec!r} (builtin: {', '.join(BUILTIN)}; or a path "
                         "to a .keras file, a SavedModel directory or an .onnx file)")
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("unsafe") and not trust_model_code:
        raise ModelError(f"{spec}: {meta['unsafe']}; refusing to load it "
                         "(set trust_model_code: true in the experiment if you trust this file)")
    ref = ModelRef(name, k, d, meta)
    user.check_inputs(name, ref.inputs, data)
    return ref
