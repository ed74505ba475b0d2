"""The kserve engine (KServe's ModelServer in .venv-kserve) on loopback; skipped without that env."""

import json

import numpy as np
import psutil
import pytest
from test_serve import bundle, get, post, session  # noqa: F401 - shared fixtures

from workbench.serve import ServeOptions, engine, free_port, kserve, protocol

pytestmark = pytest.mark.skipif(not kserve.available(), reason=kserve.unavailable_reason() or "")


@pytest.fixture(scope="module")
def ks(bundle, tmp_path_factory):  # noqa: F811
    eng = engine("kserve", bundle, ServeOptions(port=free_port()))
    eng.start(log=tmp_path_factory.mktemp("kserve") / "server.log")
    try:
        eng.wait_ready(180)
        yield eng
    finally:
        eng.stop()


def test_kserve_speaks_v2_and_answers_exactly(ks, session, digits):  # noqa: F811
    assert get(f"{ks.url}/v2/health/live")[0] == 200
    assert get(f"{ks.url}/v2/models/model/ready")[0] == 200
    meta = json.loads(get(f"{ks.url}/v2/models/model")[1])
    assert meta["inputs"][0]["shape"] == [-1, *digits.input_shape]
    x = np.ascontiguousarray(digits.x_eval[:4])
    status, body, headers = post(ks.infer_url, protocol.request_json(x))
    assert status == 200
    assert np.array_equal(protocol.response_array(body, headers["content-type"]), session.run(x))


def test_kserve_binds_to_the_requested_host(ks):
    addrs = {c.laddr.ip for p in [psutil.Process(ks.proc.pid), *psutil.Process(ks.proc.pid).children(True)]
             for c in p.net_connections() if c.status == psutil.CONN_LISTEN}
    assert addrs == {"127.0.0.1"}


def test_inferenceservice_manifest(bundle, tmp_path):  # noqa: F811
    import shutil

    import yaml

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy, symlinks=True)
    path = kserve.write_inferenceservice(copy, name="Trial 3")
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "InferenceService" and doc["metadata"]["name"] == "trial-3"
    c = doc["spec"]["predictor"]["containers"][0]
    assert "workbench.serve.kserve_main" in c["command"] and c["readinessProbe"]["httpGet"]["path"] == "/v2/models/trial-3/ready"


def test_kserve_server_trial(tmp_path):
    from workbench.trial.server import run_server_trial

    m = run_server_trial({"model": "digits_cnn", "data": "digits", "serving_engine": "kserve", "max_batch_size": 1,
                          "min_seconds": 0.25, "max_seconds": 1.0, "slo_ms": 300.0}, out_dir=tmp_path,
                         log=lambda *_: None)
    assert m["status"] == "complete" and m["max_qps_at_slo"] > 0 and m["accuracy_under_load_matches_offline"]
