"""Data sets: the builtin ``digits`` (scikit-learn, offline) and user ``.npz`` files.

A data set has a train split (for training and pruning fine-tune), a calibration split (for
static quantization, never used for accuracy) and an eval split (accuracy is measured on all of
it). The builtin split is fixed by a seed and cached as ``.npz`` so trials do not import
scikit-learn.

A user ``.npz`` holds ``x_eval`` and ``y_eval``, optionally ``x_calib`` (default: the first
fifth of ``x_eval``, which is then *not* used for accuracy) and ``x_train``/``y_train`` (only
pruning fine-tune needs them). Its cache key is the hash of the file's content, so a copied or
re-generated identical file reuses every cached artifact and a changed one never does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import cache
from workbench.errors import DataError, first_line

DIGITS_SEED = 0
DIGITS_EVAL = 360
DIGITS_CALIB = 200
TASKS = ("classification", "regression")


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


def _digits(task: str) -> Dataset:
    if task != "classification":
        raise DataError(f"data digits: is a classification data set (task is {task!r})")
    k = cache.key("digits", 1, DIGITS_SEED, DIGITS_EVAL, DIGITS_CALIB)
    path = cache.entry("data", k, _build_digits) / "digits.npz"
    with np.load(path) as z:
        return Dataset("digits", k, z["x_eval"], z["y_eval"], z["x_calib"], z["x_train"], z["y_train"])


def _build_digits32(out: Path) -> None:
    """digits upsampled to 32x32 (bilinear) with 3 channels: offline data for the 32x32 CNN."""
    base = _digits("classification")
    idx = np.linspace(0, 7, 32)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, 7)
    w = (idx - lo).astype(np.float32)
    arrays = {}
    for split in ("eval", "calib", "train"):
        x = getattr(base, f"x_{split}")[..., 0]
        rows = x[:, lo, :] * (1 - w)[None, :, None] + x[:, hi, :] * w[None, :, None]
        img = rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]
        arrays[f"x_{split}"] = np.repeat(img[..., None], 3, axis=-1).astype(np.float32)
    np.savez(out / "digits32.npz", y_eval=base.y_eval, y_train=base.y_train, **arrays)


def _digits32(task: str) -> Dataset:
    if task != "classification":
        raise DataError(f"data digits32: is a classification data set (task is {task!r})")
    k = cache.key("digits32", 1, _digits(task).key)
    path = cache.entry("data", k, _build_digits32) / "digits32.npz"
    with np.load(path) as z:
        return Dataset("digits32", k, z["x_eval"], z["y_eval"], z["x_calib"], z["x_train"], z["y_train"])


def file_hash(path: Path) -> str:
    """sha256 of a file's content (not its name), or of every file under a directory (relative
    names and contents)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def _features(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """Model inputs as float32. Float data is cast (float64 is what numpy saves by default);
    integer data is refused: feeding raw uint8 pixels to a float model is a classic silent bug."""
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: {name} must be a non-empty array of samples (got shape {x.shape})")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: {name} has dtype {x.dtype}; workbench models take float32 inputs "
                        "(convert and normalise the data first)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _targets(path: Path, name: str, y: np.ndarray, n: int, task: str) -> np.ndarray:
    if len(y) != n:
        raise DataError(f"{path}: {name} has {len(y)} rows but x_{name[2:]} has {n}")
    if task == "classification":
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or
                               (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
            raise DataError(f"{path}: {name} must be integer class labels of shape (n,) for "
                            f"task classification (got {y.dtype} {y.shape}; for real-valued "
                            "targets set task: regression)")
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: {name} must be numeric for task regression (got {y.dtype})")
    return y.astype(np.float32)


def _npz(path: Path, task: str) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = dict(npz)
    except Exception as err:  # numpy raises several types for a bad archive
        msg = first_line(err)
        raise DataError(f"{path}: not a readable .npz archive ({msg})") from None
    for name in ("x_eval", "y_eval"):
        if name not in z:
            raise DataError(f"{path}: missing array {name!r} (has {', '.join(sorted(z)) or 'none'})")
    x_eval = _features(path, "x_eval", z["x_eval"])
    y_eval = _targets(path, "y_eval", z["y_eval"], len(x_eval), task)
    if "x_calib" in z:
        x_calib = _features(path, "x_calib", z["x_calib"])
    else:  # hold out a slice of eval for calibration so accuracy is not measured on it
        if len(x_eval) < 2:
            raise DataError(f"{path}: x_eval needs at least 2 rows when there is no x_calib")
        n = max(1, len(x_eval) // 5)
        x_calib, x_eval, y_eval = x_eval[:n], x_eval[n:], y_eval[n:]
    x_train = y_train = None
    if "x_train" in z:
        x_train = _features(path, "x_train", z["x_train"])
        if "y_train" not in z:
            raise DataError(f"{path}: x_train is given without y_train")
        y_train = _targets(path, "y_train", z["y_train"], len(x_train), task)
    for name, x in (("x_calib", x_calib), ("x_train", x_train)):
        if x is not None and x.shape[1:] != x_eval.shape[1:]:
            raise DataError(f"{path}: {name} has sample shape {x.shape[1:]} but x_eval has "
                            f"{x_eval.shape[1:]}")
    k = cache.key("npz", 2, file_hash(path), task)
    return Dataset(path.stem, k, x_eval, y_eval, x_calib, x_train, y_train, task)


def load(spec: str, task: str = "classification") -> Dataset:
    """Load a builtin data set by name or a ``.npz`` file by path, for ``task``."""
    if task not in TASKS:
        raise DataError(f"task: unknown task {task!r} (choose from {', '.join(TASKS)})")
    if spec == "digits":
        return _digits(task)
    if spec == "digits32":
        return _digits32(task)
    if spec.endswith(".npz"):
        return _npz(Path(spec), task)
    raise DataError(f"data: unknown data set {spec!r} (builtin: digits, digits32; or a path to a .npz file)")
