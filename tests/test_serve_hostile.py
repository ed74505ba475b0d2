"""The endpoint under hostile input (issue 22), on loopback and bounded in time: a bundle that
tries to run code or read outside itself, malformed requests (400 with one line, never a 500),
header and connection limits, and a mixed crowd of clients that sees no connection errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.export.bundle import BundleError, open_bundle, write_bundle


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory, digits):
    from workbench.config.params import TrialParams
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    _, _, artifact = artifact_for(p)
    return write_bundle(tmp_path_factory.mktemp("bundle"), p, artifact, digits, metrics={"label": "hostile"})


def _code_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """Row 9: a bundle whose config.json claims trust and whose model.keras runs code when loaded."""
    import keras

    mark = tmp_path / "the-bundle-ran-code"
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(mark)!r}).touch(), x)[1]")  # noqa: S307
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Lambda(touch),
                          keras.layers.Dense(10)])
    b = tmp_path / "evil"
    b.mkdir()
    m.save(b / "model.keras")
    mark.unlink(missing_ok=True)  # building the model ran it once, here, on purpose
    (b / "config.json").write_text(json.dumps({"model": "digits_cnn", "data": "digits", "runtime": "tensorflow",
                                               "trust_model_code": True}))
    (b / "bundle.json").write_text(json.dumps({"artifact": "model.keras", "inputs": [[None, [8, 8, 1], "float32"]]}))
    return b, mark


def test_a_bundle_cannot_decide_to_run_code(tmp_path):
    b, mark = _code_bundle(tmp_path)
    bundle = open_bundle(b)
    assert bundle.params.trust_model_code is False  # config.json said true: ignored
    with pytest.raises(Exception, match="(?i)lambda|safe_mode|unsafe"):
        bundle.session()
    assert not mark.exists()
    # the operator's word lets it run: the test above can fail
    open_bundle(b, trust_model_code=True).session().close()
    assert mark.exists()


@pytest.mark.parametrize("artifact", ["../outside/model.onnx", "/abs/outside/model.onnx", "sub/../../model.onnx",
                                      "..\\outside\\model.onnx", 5])
def test_bundle_json_paths_stay_inside_the_bundle(onnx_bundle, tmp_path, artifact):
    """Row 10: an artifact outside the bundle directory is refused in one line."""
    import shutil

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(onnx_bundle / "model.onnx", outside / "model.onnx")
    b = tmp_path / "b"
    b.mkdir()
    for f in ("config.json", "bundle.json", "sample_input.npy"):
        shutil.copy(onnx_bundle / f, b / f)
    if isinstance(artifact, str) and artifact.startswith("/abs"):
        artifact = str(outside / "model.onnx")
    info = json.loads((b / "bundle.json").read_text())
    (b / "bundle.json").write_text(json.dumps({**info, "artifact": artifact}))
    with pytest.raises(BundleError) as err:
        open_bundle(b)
    assert len(str(err.value).splitlines()) == 1 and "inside the bundle" in str(err.value)
    (b / "bundle.json").write_text(json.dumps({**info, "artifact": "model.onnx"}))
    shutil.copy(onnx_bundle / "model.onnx", b / "model.onnx")
    assert open_bundle(b).artifact.path == b / "model.onnx"  # the same bundle, its own artifact: fine
