"""What is measured of an artifact besides time: its outputs over a split, and its size."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from workbench import runtimes
from workbench.data import inputs


def evaluate(session: runtimes.Session, x: inputs.Inputs, batch_size: int) -> np.ndarray:
    """Outputs of ``session`` on all of ``x`` (an array, or a dict of named arrays for a model
    with several inputs), fed in batches of ``batch_size``."""
    return np.concatenate([np.asarray(session.run(inputs.take(x, i, i + batch_size)))
                           for i in range(0, inputs.rows(x), batch_size)])


def size(path: Path) -> tuple[int, int]:
    """Bytes of an artifact (a file, or every file of a directory), raw and gzipped."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    raw = b"".join(p.read_bytes() for p in sorted(files))
    return len(raw), len(gzip.compress(raw, compresslevel=6))
