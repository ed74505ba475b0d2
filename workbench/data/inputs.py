"""Model inputs as the workbench passes them around: one array, or a dict of named arrays.

A model with one input takes an ``np.ndarray`` (samples first); a model with several takes a
``dict`` ``{input name: array}`` whose arrays share the sample count. Every place that slices,
repeats or feeds inputs goes through these helpers, so none of them has to care which it got.
Runtimes name their inputs in their own ways (``tokens``, ``tokens:0``,
``serving_default_tokens:0``): :func:`by_runtime_names` matches them to the data's names.
"""

from __future__ import annotations

import re
from typing import Mapping, Union

import numpy as np

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]

# The data types a model input may have (anything else is refused at preflight).
DTYPES = ("float32", "float16", "int32", "int64", "bool")


def rows(x: Inputs) -> int:
    """The number of samples."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def take(x: Inputs, i: int, j: int) -> Inputs:
    """Samples ``i:j`` (contiguous, so a runtime never copies them inside a timed call)."""
    if isinstance(x, Mapping):
        return {k: np.ascontiguousarray(v[i:j]) for k, v in x.items()}
    return np.ascontiguousarray(x[i:j])


def repeat_to(x: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of ``x`` repeated as often as needed (a fixed timing batch)."""
    reps = -(-n // rows(x))
    if isinstance(x, Mapping):
        return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:n]) for k, v in x.items()}
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def specs(x: Inputs) -> list[tuple[str | None, tuple[int, ...], str]]:
    """(name, sample shape, dtype) of each input; the name is None for a single array."""
    if isinstance(x, Mapping):
        return [(k, tuple(v.shape[1:]), str(v.dtype)) for k, v in x.items()]
    return [(None, tuple(x.shape[1:]), str(x.dtype))]


def names(x: Inputs) -> list[str]:
    """Input names of a dict (empty for a single array)."""
    return list(x) if isinstance(x, Mapping) else []


def base_name(runtime_name: str) -> str:
    """``serving_default_tokens:0`` / ``tokens:0`` -> ``tokens``."""
    return re.sub(r":\d+$", "", runtime_name).removeprefix("serving_default_")


def by_runtime_names(batch: Inputs, runtime_names: list[str]) -> list[np.ndarray]:
    """The arrays of ``batch`` in the order of a runtime's ``runtime_names``.

    A single array goes to a single input whatever its name; a dict is matched by name (exact,
    then without the runtime's decorations); several inputs that match no name are an error,
    never a guess by position."""
    if not isinstance(batch, Mapping):
        if len(runtime_names) != 1:
            raise ValueError(f"the model has {len(runtime_names)} inputs "
                             f"({', '.join(runtime_names)}) but one array was given")
        return [batch]
    if len(batch) == 1 and len(runtime_names) == 1:
        return [next(iter(batch.values()))]
    out = []
    for rn in runtime_names:
        if rn in batch:
            out.append(batch[rn])
        elif base_name(rn) in batch:
            out.append(batch[base_name(rn)])
        else:
            raise ValueError(f"the model's input {rn!r} is not among the data's inputs "
                             f"({', '.join(batch)})")
    return out


def cast_float32(x: Inputs) -> Inputs:
    """Float inputs as float32, the others unchanged (calibration and representative data)."""
    if isinstance(x, Mapping):
        return {k: cast_float32(v) for k, v in x.items()}
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
