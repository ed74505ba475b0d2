"""Data sets: the builtin ``digits`` (scikit-learn, offline) and user ``.npz`` files.

A data set has a train split (for training and pruning fine-tune), a calibration split (for
static quantization, never used for accuracy) and an eval split (accuracy is measured on all of
it). The builtin split is fixed by a seed and cached as ``.npz`` so trials do not import
scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import cache
from workbench.errors import DataError

DIGITS_SEED = 0
DIGITS_EVAL = 360
DIGITS_CALIB = 200


@dataclass(frozen=True)
class Dataset:
    name: str
    key: str
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_calib: np.ndarray
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_eval.shape[1:])


def _build_digits(out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    ev, ca, tr = np.split(order, [DIGITS_EVAL, DIGITS_EVAL + DIGITS_CALIB])
    np.savez(out / "digits.npz", x_eval=x[ev], y_eval=y[ev], x_calib=x[ca], y_calib=y[ca],
             x_train=x[tr], y_train=y[tr])


def _digits() -> Dataset:
    k = cache.key("digits", 1, DIGITS_SEED, DIGITS_EVAL, DIGITS_CALIB)
    path = cache.entry("data", k, _build_digits) / "digits.npz"
    with np.load(path) as z:
        return Dataset("digits", k, z["x_eval"], z["y_eval"], z["x_calib"], z["x_train"], z["y_train"])


def _npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        z = dict(np.load(path, allow_pickle=False))
    except Exception as err:  # numpy raises several types for a bad archive
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    for name in ("x_eval", "y_eval"):
        if name not in z:
            raise DataError(f"{path}: missing array {name!r} (has {', '.join(sorted(z)) or 'none'})")
    if len(z["x_eval"]) != len(z["y_eval"]):
        raise DataError(f"{path}: x_eval has {len(z['x_eval'])} rows but y_eval has {len(z['y_eval'])}")
    x_eval, y_eval = z["x_eval"], z["y_eval"]
    if "x_calib" in z:
        x_calib = z["x_calib"]
    else:  # hold out a slice of eval for calibration so accuracy is not measured on it
        n = max(1, len(x_eval) // 5)
        x_calib, x_eval, y_eval = x_eval[:n], x_eval[n:], y_eval[n:]
    k = cache.key("npz", path.stat().st_size, path.stat().st_mtime_ns, str(path))
    return Dataset(path.stem, k, x_eval, y_eval, x_calib, z.get("x_train"), z.get("y_train"))


def load(spec: str) -> Dataset:
    """Load a builtin data set by name or a ``.npz`` file by path."""
    if spec == "digits":
        return _digits()
    if spec.endswith(".npz"):
        return _npz(Path(spec))
    raise DataError(f"data: unknown data set {spec!r} (builtin: digits; or a path to a .npz file)")
