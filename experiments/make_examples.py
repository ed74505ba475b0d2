"""Generate the small model and data files of the bring-your-own examples in experiments/byo/.

    .venv/bin/python experiments/make_examples.py [OUT_DIR]     # default: experiments/byo

Writes (a few hundred KB in all, deterministic up to TensorFlow's numerics):

- ``digits.npz``: scikit-learn digits as 8x8x1 float32 in [0, 1]; ``x_eval``/``y_eval``,
  ``x_calib`` and ``x_train``/``y_train`` (compressed: the pixels take 17 values)
- ``digits_mlp.keras``: a small Keras 3 classifier trained on it
- ``digits_mlp_savedmodel/``: the same model exported as a TF SavedModel (``model.export``)
- ``digits_mlp.onnx``: the same model converted with tf2onnx (dynamic batch)
- ``regression.npz`` + ``regression.keras``: a synthetic 8-feature regression and a small MLP

The tests call :func:`make_all` into a temporary directory, so they never depend on committed
binaries; the example experiments (``experiments/byo_*.yaml``) use the committed copies.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 0
HERE = Path(__file__).resolve().parent


def digits_data(out: Path) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    ev, ca, tr = order[:300], order[300:400], order[400:1100]
    arrays = dict(x_eval=x[ev], y_eval=y[ev], x_calib=x[ca], x_train=x[tr], y_train=y[tr])
    np.savez_compressed(out / "digits.npz", **arrays)
    return arrays


def regression_data(out: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1, 1, size=(900, 8)).astype(np.float32)
    w = np.linspace(-1, 1, 8, dtype=np.float32)
    y = (x @ w + 0.5 * np.sin(3 * x[:, 0])).astype(np.float32)
    arrays = dict(x_eval=x[:300], y_eval=y[:300], x_calib=x[300:400], x_train=x[400:], y_train=y[400:])
    np.savez_compressed(out / "regression.npz", **arrays)
    return arrays


def _to_onnx(model, input_shape: tuple[int, ...], path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *input_shape), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def serve(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=17)
    path.write_bytes(proto.SerializeToString())


def make_all(out: Path = HERE / "byo") -> Path:
    """Write every example file into ``out`` (created); returns ``out``."""
    import keras
    from keras import layers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)

    d = digits_data(out)
    clf = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(),
                            layers.Dense(32, activation="relu"),
                            layers.Dense(10, activation="softmax")], name="digits_mlp")
    clf.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    clf.fit(d["x_train"], d["y_train"], epochs=30, batch_size=32, verbose=0)
    clf.save(out / "digits_mlp.keras")
    clf.export(str(out / "digits_mlp_savedmodel"), verbose=False)
    _to_onnx(clf, (8, 8, 1), out / "digits_mlp.onnx")

    r = regression_data(out)
    reg = keras.Sequential([keras.Input((8,)), layers.Dense(32, activation="tanh"),
                            layers.Dense(1)], name="regression_mlp")
    reg.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    reg.fit(r["x_train"], r["y_train"], epochs=40, batch_size=32, verbose=0)
    reg.save(out / "regression.keras")
    return out


if __name__ == "__main__":
    target = make_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "byo")
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target} ({total / 1024:.0f} KB)")
