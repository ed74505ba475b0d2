"""`workbench image`: an OCI image (podman) serving an exported bundle with the builtin engine,
run on loopback and answering what the bundle's predict.py answers; the errors before any work."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli
from test_bundle import FAST
from test_serve import bundle, get, post  # noqa: F401 - shared fixtures

from workbench import trial
from workbench.export import image
from workbench.export.run import export_trial
from workbench.serve import free_port, kserve, protocol


def _podman_reason() -> str | None:
    """Why podman cannot build and run here (None: it can)."""
    tool = image.missing_tool("podman", "runc", "mmdebstrap")
    if tool:
        return f"{tool} is not installed"
    proc = image.podman("info", check=False)
    return None if proc.returncode == 0 else f"podman info failed: {image._last_line(proc.stderr)}"


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for word in words:
        assert word in res.stderr


def test_not_a_bundle_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _one_line_error(run_cli("image", str(tmp_path), "--tag", "x:1"), str(tmp_path), "not a bundle")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_bad_tag_is_one_line(bundle):  # noqa: F811
    _one_line_error(run_cli("image", str(bundle), "--tag", "Bad Tag!"), "--tag")


def test_a_manifest_workbench_did_not_write_is_kept(bundle, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy, symlinks=True)
    (copy / "inferenceservice.yaml").write_text("kind: Mine\n")
    _one_line_error(run_cli("image", str(copy), "--tag", "x:1"), "inferenceservice.yaml", "not written by workbench")
    assert (copy / "inferenceservice.yaml").read_text() == "kind: Mine\n"


def test_missing_podman_is_one_line(bundle, tmp_path):  # noqa: F811
    empty = tmp_path / "bin"
    empty.mkdir()
    exe = Path(sys.executable).parent / "workbench"
    res = subprocess.run([str(exe), "image", str(bundle), "--tag", "x:1"], capture_output=True, text=True,
                         env={**os.environ, "PATH": str(empty)})
    _one_line_error(res, "podman is not installed", "apt-get install podman runc mmdebstrap")


@pytest.mark.parametrize("env, expected", [
    ({}, ["--host", "0.0.0.0", "--port", "8080"]),
    ({"HOST": "127.0.0.1", "PORT": "9001", "GRPC_PORT": "9002"},
     ["--host", "127.0.0.1", "--port", "9001", "--grpc-port", "9002"]),
], ids=["defaults", "host-port-grpc"])
def test_entrypoint_honours_host_port_grpc_port(env, expected):
    """The image's entrypoint, run by /bin/sh as podman runs it, with its exec shown instead."""
    script = image.ENTRYPOINT.replace("exec python", "printf '%s\\n' python", 1)
    assert script != image.ENTRYPOINT
    clean = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "GRPC_PORT")}
    out = subprocess.run(["/bin/sh", "-c", script, "workbench-serve", "--max-batch-size", "8"],
                         env={**clean, **env}, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["python", "-m", "workbench.cli", "serve", "/bundle", *expected, "--max-batch-size", "8"]


def test_inferenceservice_for_the_image(bundle, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy, symlinks=True)
    doc = yaml.safe_load(kserve.write_inferenceservice(copy, name="Trial 3", image="digits-cnn:1").read_text())
    c = doc["spec"]["predictor"]["containers"][0]
    assert doc["kind"] == "InferenceService" and c["image"] == "digits-cnn:1" and "command" not in c
    assert c["args"] == ["--name", "trial-3"] and c["readinessProbe"]["httpGet"]["path"] == "/v2/models/trial-3/ready"
    assert {"name": "PORT", "value": "8080"} in c["env"] and "STORAGE_URI" not in json.dumps(doc)


@pytest.mark.slow
@pytest.mark.skipif(_podman_reason() is not None, reason=_podman_reason() or "")
def test_image_serves_what_predict_py_answers(tmp_path):
    out = export_trial(trial.run({**FAST, "runtime": "onnxruntime"}), tmp_path / "bundle")
    subprocess.run([sys.executable, "predict.py", "sample_input.npy", "--out", "y.npy"], cwd=out, check=True,
                   capture_output=True, timeout=300)
    x, expected = np.load(out / "sample_input.npy"), np.load(out / "y.npy")
    tag = f"localhost/workbench-test-{os.getpid()}:1"
    cid = None
    try:
        res = run_cli("image", str(out), "--tag", tag)
        assert res.returncode == 0, res.stderr[-2000:]
        info = json.loads(image.podman("image", "inspect", tag).stdout)[0]
        assert info["Config"]["Labels"]["workbench.runtime"] == "onnxruntime"
        assert info["Config"]["User"] == "65534:65534"  # the server is not root in its container
        # the KServe manifest names the image it was built as
        manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
        assert manifest["spec"]["predictor"]["containers"][0]["image"] == tag
        # small: no TensorFlow for an onnxruntime bundle, no pip; nothing of the build's wheels mount
        # (/mnt) or the host's pip configuration in it
        probe = image.podman("run", "--rm", "--network=none", "--entrypoint", "python", tag, "-c",
                             "import importlib.util as u, json, os; print(json.dumps(["
                             "[m for m in ('tensorflow', 'pip', 'onnxruntime') if u.find_spec(m)], os.listdir('/mnt'), "
                             "[p for p in ('/etc/pip.conf', '/etc/xdg/pip') if os.path.exists(p)]]))")
        assert json.loads(probe.stdout) == [["onnxruntime"], [], []], probe.stdout + probe.stderr
        port = free_port()
        cid = image.podman("run", "-d", "--network=host", "-e", "HOST=127.0.0.1", "-e", f"PORT={port}",
                           tag).stdout.strip()
        url = f"http://127.0.0.1:{port}/v2/models/model"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(f"{url}/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert image.podman("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true", \
                image.podman("logs", cid, check=False).stderr[-2000:]
            time.sleep(0.2)
        status, body, headers = post(f"{url}/infer", protocol.request_json(x))
        assert status == 200, body[:500]
        assert np.array_equal(protocol.response_array(body, headers["content-type"]), expected)
        # SIGTERM from podman stop: the server drains and exits by itself (0), not killed after the timeout
        t0 = time.monotonic()
        image.podman("stop", "-t", "20", cid)
        assert time.monotonic() - t0 < 15
        assert image.podman("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
    finally:
        if cid:
            image.podman("rm", "-f", "-t", "5", cid, check=False)
        image.podman("rmi", "-f", tag, check=False)
    assert image.podman("ps", "-a", "-q", "--filter", f"ancestor={tag}").stdout.strip() == ""
    assert image.podman("image", "exists", tag, check=False).returncode != 0
