"""The data sets: builtin ones generated offline, and ``.npz`` files (see the package)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.core import cache
from workbench.core.errors import DataError, first_line
from workbench.data import inputs
from workbench.data.inputs import Inputs

DIGITS_SEED = 0
DIGITS_EVAL = 360
DIGITS_CALIB = 200
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Dataset:
    name: str
    key: str
    x_eval: Inputs
    y_eval: np.ndarray
    x_calib: Inputs
    x_train: Inputs | None = None
    y_train: np.ndarray | None = None
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Sample shape of a single-input data set (of the first input when there are several)."""
        return self.inputs[0][1]

    @property
    def inputs(self) -> list[tuple[str | None, tuple[int, ...], str]]:
        """(name, sample shape, dtype) of each input; name None for a single unnamed input."""
        return inputs.specs(self.x_eval)

    @property
    def multi_input(self) -> bool:
        return isinstance(self.x_eval, dict)

    @property
    def n_eval(self) -> int:
        return inputs.rows(self.x_eval)

    def split(self, name: str) -> Inputs | None:
        """``x_eval`` | ``x_calib`` | ``x_train`` by its short name (eval, calib, train)."""
        return getattr(self, f"x_{name}")

    def take(self, split: str, i: int, j: int) -> Inputs:
        """Samples ``i:j`` of a split, as an array or a dict of arrays like the split itself."""
        return inputs.take(self.split(split), i, j)


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


# The builtin text data set: token-id sequences generated in code (no download). Each class owns
# a few keyword tokens; a sequence holds KEYWORDS of its class and DISTRACTORS of other classes
# at random positions among filler tokens, then padding (id 0, mask 0) up to TEXT_LEN. The label
# is the class whose keywords occur most: a model has to look at the whole sequence and ignore
# the padding, which is what the attention layer and the mask are for.
TEXT_SEED = 1
TEXT_LEN = 32
TEXT_VOCAB = 256
TEXT_CLASSES = 4
TEXT_KEYWORDS = 8  # keyword tokens per class: ids 1 + 8c .. 8 + 8c
TEXT_ROWS = {"eval": 1000, "calib": 200, "train": 4000}


def _text_split(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    tokens = np.zeros((n, TEXT_LEN), np.int32)
    mask = np.zeros((n, TEXT_LEN), np.int32)
    labels = rng.integers(0, TEXT_CLASSES, n)
    first_filler = 1 + TEXT_CLASSES * TEXT_KEYWORDS
    for i, c in enumerate(labels):
        length = int(rng.integers(TEXT_LEN // 4, TEXT_LEN + 1))
        seq = rng.integers(first_filler, TEXT_VOCAB, length)
        n_kw = int(rng.integers(2, 5))
        n_other = int(rng.integers(0, n_kw - 1))  # strictly fewer distractors than keywords
        other = (c + rng.integers(1, TEXT_CLASSES)) % TEXT_CLASSES
        words = np.concatenate([1 + c * TEXT_KEYWORDS + rng.integers(0, TEXT_KEYWORDS, n_kw),
                                1 + other * TEXT_KEYWORDS + rng.integers(0, TEXT_KEYWORDS, n_other)])
        seq[rng.choice(length, len(words), replace=False)] = words
        tokens[i, :length] = seq
        mask[i, :length] = 1
    return {"tokens": tokens, "mask": mask}, labels.astype(np.int64)


def _build_text(out: Path) -> None:
    rng = np.random.default_rng(TEXT_SEED)
    arrays = {}
    for split, n in TEXT_ROWS.items():
        x, y = _text_split(rng, n)
        arrays.update({f"x_{split}.{k}": v for k, v in x.items()}, **{f"y_{split}": y})
    np.savez(out / "text.npz", **arrays)


def _text(task: str) -> Dataset:
    if task != "classification":
        raise DataError(f"data text: is a classification data set (task is {task!r})")
    k = cache.key("text", 1, TEXT_SEED, TEXT_LEN, TEXT_VOCAB, TEXT_CLASSES, TEXT_KEYWORDS, TEXT_ROWS)
    path = cache.entry("data", k, _build_text) / "text.npz"
    with np.load(path) as npz:
        z = dict(npz)
    return Dataset("text", k, _split_inputs(path, z, "eval"), z["y_eval"], _split_inputs(path, z, "calib"),
                   _split_inputs(path, z, "train"), z["y_train"])


def _features(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """One input array. float64 (what numpy saves by default) is cast to float32; other dtypes
    must be one a model input can have, and are kept: whether they fit the model's input (a
    uint8 image given to a float model is a classic silent bug) is checked at preflight."""
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: {name} must be a non-empty array of samples (got shape {x.shape})")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if str(x.dtype) not in inputs.DTYPES:
        raise DataError(f"{path}: {name} has dtype {x.dtype}; model inputs may be "
                        f"{', '.join(inputs.DTYPES)} (convert the data first)")
    return np.ascontiguousarray(x)


def _split_inputs(path: Path, z: dict[str, np.ndarray], split: str) -> Inputs | None:
    """``x_<split>`` as one array, or ``x_<split>.<name>`` arrays as a dict (None if absent)."""
    prefix = f"x_{split}."
    named = {k[len(prefix):]: _features(path, k, v) for k, v in z.items() if k.startswith(prefix)}
    if f"x_{split}" in z:
        if named:
            raise DataError(f"{path}: has both x_{split} and x_{split}.<name> arrays; use one layout")
        return _features(path, f"x_{split}", z[f"x_{split}"])
    if not named:
        return None
    counts = {k: len(v) for k, v in named.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{path}: the x_{split}.<name> arrays have different numbers of rows "
                        f"({', '.join(f'{k}: {n}' for k, n in counts.items())})")
    return named


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
    x_eval = _split_inputs(path, z, "eval")
    for name, present in (("x_eval", x_eval is not None), ("y_eval", "y_eval" in z)):
        if not present:
            raise DataError(f"{path}: missing array {name!r} (has {', '.join(sorted(z)) or 'none'}; "
                            "several inputs: x_eval.<input name>)")
    n_eval = inputs.rows(x_eval)
    y_eval = _targets(path, "y_eval", z["y_eval"], n_eval, task)
    x_calib = _split_inputs(path, z, "calib")
    if x_calib is None:  # hold out a slice of eval for calibration so accuracy is not measured on it
        if n_eval < 2:
            raise DataError(f"{path}: x_eval needs at least 2 rows when there is no x_calib")
        n = max(1, n_eval // 5)
        x_calib, x_eval, y_eval = (inputs.take(x_eval, 0, n), inputs.take(x_eval, n, n_eval),
                                   y_eval[n:])
    y_train = None
    x_train = _split_inputs(path, z, "train")
    if x_train is not None:
        if "y_train" not in z:
            raise DataError(f"{path}: x_train is given without y_train")
        y_train = _targets(path, "y_train", z["y_train"], inputs.rows(x_train), task)
    expected = inputs.specs(x_eval)
    for split, x in (("calib", x_calib), ("train", x_train)):
        if x is None:
            continue
        found = inputs.specs(x)
        if [n for n, _, _ in found] != [n for n, _, _ in expected]:
            raise DataError(f"{path}: x_{split} has inputs {[n for n, _, _ in found]} but x_eval has "
                            f"{[n for n, _, _ in expected]}")
        for (name, shape, dtype), (_, eshape, edtype) in zip(found, expected):
            label = f"x_{split}" + (f".{name}" if name else "")
            if shape != eshape or dtype != edtype:
                raise DataError(f"{path}: {label} has sample shape {shape} {dtype} but x_eval "
                                f"has {eshape} {edtype}")
    k = cache.key("npz", 3, cache.file_hash(path), task)
    return Dataset(path.stem, k, x_eval, y_eval, x_calib, x_train, y_train, task)


def load(spec: str, task: str = "classification") -> Dataset:
    """Load a builtin data set by name or a ``.npz`` file by path, for ``task``."""
    if task not in TASKS:
        raise DataError(f"task: unknown task {task!r} (choose from {', '.join(TASKS)})")
    if spec == "digits":
        return _digits(task)
    if spec == "digits32":
        return _digits32(task)
    if spec == "text":
        return _text(task)
    if spec.endswith(".npz"):
        return _npz(Path(spec), task)
    raise DataError(f"data: unknown data set {spec!r} (builtin: digits, digits32, text; or a path to a .npz file)")
