"""Content-addressed artifact cache, and the hashes that address it (:func:`key`, :func:`file_hash`).

An entry is a directory named by the hash of everything that determines its content (source
model key, transform parameters, library versions), so a variant is built once per machine and
reused by every later trial. Entries are built in a temporary directory and renamed into place
under a per-key file lock: concurrent workers never see a half-written entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator


def root() -> Path:
    """The cache root: ``$WORKBENCH_CACHE_DIR`` or ``~/.cache/workbench``."""
    path = Path(os.environ.get("WORKBENCH_CACHE_DIR") or Path.home() / ".cache" / "workbench").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions(*packages: str) -> dict[str, str]:
    """Installed versions, read from package metadata (cheap: imports nothing)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def key(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs (released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def entry(kind: str, entry_key: str, build: Callable[[Path], None]) -> Path:
    """Return the directory of a cache entry, building it with ``build(tmp_dir)`` if absent."""
    final = root() / kind / entry_key
    if (final / ".complete").exists():
        return final
    with file_lock(root() / kind / f"{entry_key}.lock"):
        if (final / ".complete").exists():  # built by another worker while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key}-", dir=final.parent))
        scratch = Path(tempfile.mkdtemp(prefix=f".{entry_key}-cwd-", dir=final.parent))
        try:
            # Converters and quantizers may write side files (ONNX external data named by
            # uuid, TF logs) into the working directory: give them a scratch one, so nothing
            # lands in the user's folder or the trial's.
            with contextlib.chdir(scratch):
                build(tmp)
            (tmp / ".complete").touch()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
    return final
