"""Shared fixtures: one artifact cache per test session (so the builtin model is trained once,
from scratch, by the suite itself) and a private measurement lock."""

import os
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
    from workbench import zoo

    return zoo.resolve("digits_cnn", digits)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ``workbench`` console script as a user would."""
    exe = Path(sys.executable).parent / "workbench"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or ROOT)
