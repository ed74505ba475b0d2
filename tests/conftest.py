"""Shared fixtures: one artifact cache per test session (so the builtin model is trained once,
from scratch, by the suite itself) and a private measurement lock."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Set before any test imports workbench, and inherited by every kernel papermill or nbval starts.
if "WORKBENCH_CACHE_DIR" not in os.environ:
    os.environ["WORKBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="workbench-test-cache-")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow takes its thread pools once per process: tests that run trials in-process (one
# thread, the default) after TensorFlow was first used here need those pools to be one thread
# (a trial whose threads cannot be applied is pruned, see workbench/runtimes/tensorflow.py).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


@pytest.fixture(scope="session")
def digits():
    from workbench import data

    return data.load("digits")


@pytest.fixture(scope="session")
def digits_model(digits):
    from workbench import models

    return models.resolve("digits_cnn", digits)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ``workbench`` console script as a user would."""
    exe = Path(sys.executable).parent / "workbench"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or ROOT)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``plugin(file, module)``: tests/plugins/<file> installed as ``module`` in a temporary
    directory and named in WORKBENCH_PLUGINS (which trial kernels and the bundle's subprocesses
    inherit, with the directory on PYTHONPATH). At teardown the runtimes and transforms it
    registered are removed again, so later tests see only the shipped plug-ins."""
    from workbench import runtimes, variants
    from workbench.core import plugins

    # the shipped plug-ins, imported now so that only the test's own are removed at teardown
    before = (set(runtimes.registered()), {t.name for t in variants.registered()})
    installed = []

    def install(file: str, module: str) -> None:
        shutil.copy(Path(__file__).parent / "plugins" / file, tmp_path / f"{module}.py")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
        monkeypatch.setenv(plugins.ENV, module)
        installed.append(module)

    yield install
    for registry, names in zip((runtimes.base._REGISTRY, variants.base._REGISTRY), before):
        for name in set(registry) - names:
            registry.pop(name)
    for module in installed:
        sys.modules.pop(module, None)
