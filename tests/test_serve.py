"""The builtin serving engine on loopback: v2 protocol, exact answers under concurrent load,
binary bodies, malformed bodies, queue shedding, client disconnects, SIGTERM drain, metrics."""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from workbench.serve import ServeOptions, engine, free_port, protocol
from workbench.serve.metrics import NAMES


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, digits):
    from workbench.config.params import TrialParams
    from workbench.export.bundle import write_bundle
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    _, _, artifact = artifact_for(p)
    return write_bundle(tmp_path_factory.mktemp("bundle"), p, artifact, digits)


@pytest.fixture(scope="session")
def session(bundle):
    from workbench.export.bundle import open_bundle

    s = open_bundle(bundle).session()
    yield s
    s.close()


def start(bundle, tmp_path, **kw):
    extra = kw.pop("extra", {})
    eng = engine("builtin", bundle, ServeOptions(port=free_port(), extra=extra, **kw))
    eng.start(log=tmp_path / f"server-{eng.options.port}.log")
    try:
        eng.wait_ready(120)
    except Exception:
        eng.stop()
        raise
    return eng


@pytest.fixture(params=["thread", "process"])
def drain_kind(request):
    return request.param


@pytest.fixture
def server(bundle, tmp_path):
    eng = start(bundle, tmp_path, max_batch_size=8, max_queue_delay_ms=20)
    yield eng
    eng.stop()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def post(url, body, content_type="application/json", headers=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, err.read(), {k.lower(): v for k, v in err.headers.items()}


async def post_many(url, bodies, content_type="application/json", limit=64):
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as s:
        async def one(body):
            async with s.post(url, data=body, headers={"Content-Type": content_type}) as r:
                return r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()}
        return await asyncio.gather(*(one(b) for b in bodies))


def test_v2_routes(server, digits):
    assert get(f"{server.url}/v2/health/live")[0] == 200
    assert get(f"{server.url}/v2/health/ready")[0] == 200
    assert get(f"{server.url}/v2/models/model/ready")[0] == 200
    assert get(f"{server.url}/v2/models/other/ready")[0] == 404
    status, body, _ = get(f"{server.url}/v2/models/model")
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "model"
    assert meta["inputs"][0]["shape"] == [-1, *digits.input_shape] and meta["inputs"][0]["datatype"] == "FP32"
    assert meta["outputs"][0]["shape"] == [-1, 10]


def test_answers_are_the_unbatched_answers_under_concurrent_load(server, session, digits):
    rng = np.random.default_rng(0)
    rows = [digits.x_eval[i:i + n] for i, n in zip(range(0, 300, 3), rng.integers(1, 4, 100))]
    answers = asyncio.run(post_many(server.infer_url, [protocol.request_json(x) for x in rows]))
    for x, (status, body, headers) in zip(rows, answers):
        assert status == 200
        y = protocol.response_array(body, headers["content-type"], headers)
        assert np.array_equal(y, session.run(np.ascontiguousarray(x)))
    m = server.metrics()
    assert m["workbench_batch_size_sum"] > m["workbench_batch_size_count"]  # batches did form
    assert m["workbench_requests_success_total"] == len(rows)


def test_binary_bodies(server, session, digits):
    x = np.ascontiguousarray(digits.x_eval[:5])
    expected = session.run(x)
    status, body, headers = post(server.infer_url, protocol.request_npy(x), protocol.NPY)
    assert status == 200 and headers["content-type"] == protocol.NPY
    assert np.array_equal(protocol.response_array(body, headers["content-type"]), expected)
    # v2 binary-data extension: JSON header, then the raw tensor; binary output asked for
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    status, body, headers = post(server.infer_url, head + x.tobytes(), protocol.NPY,
                                 {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and "inference-header-content-length" in headers
    assert np.array_equal(protocol.response_array(body, headers["content-type"], headers), expected)


def test_malformed_bodies_get_400_and_the_server_keeps_serving(bundle, tmp_path, digits):
    eng = start(bundle, tmp_path, extra={"max_body_bytes": 4096})
    try:
        x = digits.x_eval[:1]
        bad = {
            "bad JSON": (b'{"inputs": [', "application/json"),
            "wrong shape": (protocol.request_json(np.zeros((1, 7, 8, 1), np.float32)), "application/json"),
            "wrong datatype": (protocol.request_json(x.astype(np.float64)), "application/json"),
            "data/shape mismatch": (json.dumps({"inputs": [{"name": "i", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                                            "data": [0.0] * 3}]}).encode(), "application/json"),
            "oversize": (protocol.request_json(digits.x_eval[:40]), "application/json"),
            "not npy": (b"\x93NUMPY garbage", protocol.NPY),
            "no inputs": (b"{}", "application/json"),
        }
        for what, (body, ctype) in bad.items():
            status, answer, headers = post(eng.infer_url, body, ctype)
            assert status == 400, what
            error = json.loads(answer)["error"]
            assert error and "\n" not in error, what
        status, body, headers = post(eng.infer_url, protocol.request_json(x))
        assert status == 200
        m = eng.metrics()
        assert m["workbench_requests_failure_total{code=400}"] == len(bad)
    finally:
        eng.stop()


def test_full_queue_sheds_with_503_then_recovers(bundle, tmp_path, session, digits):
    eng = start(bundle, tmp_path, max_batch_size=1, max_queue=2, max_queue_delay_ms=0)
    try:
        rows = [digits.x_eval[i % 360:i % 360 + 1] for i in range(300)]
        answers = asyncio.run(post_many(eng.infer_url, [protocol.request_json(x) for x in rows], limit=300))
        codes = [a[0] for a in answers]
        assert set(codes) <= {200, 503} and 503 in codes
        for x, (status, body, headers) in zip(rows, answers):
            if status == 200:
                assert np.array_equal(protocol.response_array(body, headers["content-type"]), session.run(x))
            else:
                assert "queue full" in json.loads(body)["error"]
        assert post(eng.infer_url, protocol.request_json(rows[0]))[0] == 200
        assert eng.metrics()["workbench_requests_failure_total{code=503}"] == codes.count(503)
    finally:
        eng.stop()


def test_metrics_names_are_exposed(server):
    text = get(f"{server.url}/metrics")[1].decode()
    for name in NAMES:
        assert name in text, name


def test_client_disconnect_mid_request(bundle, tmp_path, digits):
    import aiohttp

    eng = start(bundle, tmp_path, max_batch_size=64, max_queue_delay_ms=1500)
    try:
        async def walk_away():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as s:
                for _ in range(5):
                    with pytest.raises(asyncio.TimeoutError):
                        async with s.post(eng.infer_url, data=protocol.request_json(digits.x_eval[:1]),
                                          headers={"Content-Type": "application/json"}) as r:
                            await r.read()
        asyncio.run(walk_away())
        status, body, headers = post(eng.infer_url, protocol.request_json(digits.x_eval[:2]))
        assert status == 200
        assert eng.proc.poll() is None
    finally:
        eng.stop()


def test_sigterm_drains_in_flight_requests(bundle, tmp_path, digits, session, drain_kind):
    """With thread instances and with process instances (a runtime holding the GIL)."""
    eng = start(bundle, tmp_path, max_batch_size=64, max_queue_delay_ms=1500,
                extra={"instance_kind": drain_kind})
    x = digits.x_eval[:3]

    async def request_then_term():
        task = asyncio.ensure_future(post_many(eng.infer_url, [protocol.request_json(x)] * 4))
        for _ in range(100):  # the requests are queued, waiting for the 1.5 s batching delay
            await asyncio.sleep(0.05)
            if eng.metrics().get("workbench_queue_depth") == 4:
                break
        eng.proc.send_signal(signal.SIGTERM)
        return await task
    try:
        answers = asyncio.run(request_then_term())
        for status, body, headers in answers:
            assert status == 200, (body, eng.log_path.read_text())
            assert np.array_equal(protocol.response_array(body, headers["content-type"]), session.run(x))
        eng.proc.wait(30)
        assert eng.proc.returncode is not None
    finally:
        eng.stop()
    assert group_gone(eng.proc.pid)  # nothing of the server's process group is left


def group_gone(pgid, seconds=10.0):
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["pid", "status"])
                if _pgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not left:
            return True
        time.sleep(0.1)
    print("left in the group:", [(p.pid, p.info["status"], p.cmdline()) for p in left])
    return False


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_server_exits_when_its_parent_is_gone(bundle, tmp_path):
    """A sweep killed with SIGKILL leaves no server: the server watches its parent's pid."""
    import subprocess
    import sys

    port = free_port()
    code = (f"from workbench.serve import engine, ServeOptions\n"
            f"e = engine('builtin', {str(bundle)!r}, ServeOptions(port={port}))\n"
            f"e.start(); e.wait_ready(120); print(e.proc.pid, flush=True)\n"
            f"import time; time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(server_pid, signal.SIGKILL)
        pytest.fail("the server outlived its parent")


def test_batcher_policies(session, digits):
    """idle: a lone request never waits for company; delay: it waits at most the delay."""
    from workbench.serve.batcher import Batcher, thread_instance

    x = np.ascontiguousarray(digits.x_eval[:1])

    async def lone(policy, delay_ms):
        b = Batcher([thread_instance(session)], 8, delay_ms, policy, 16)
        b.start()
        try:
            return await asyncio.wait_for(b.submit(x), 30)
        finally:
            await b.stop()

    assert np.array_equal(asyncio.run(lone("idle", 600_000)), session.run(x))
    assert np.array_equal(asyncio.run(lone("delay", 50)), session.run(x))


def test_inline_answers_are_the_batched_answers(session, digits):
    """A request that would be a batch of one runs inline, on the event loop's thread (batch 1;
    alone under policy idle, at once or from the queue when others were in the server; or when
    its delay passed); requests that arrive together form batches, which a model as fast as this
    one also computes inline. Both give the same answer, bit for bit, and the same as the session
    offline."""
    import threading

    from workbench.serve.batcher import Batcher, thread_instance

    xs = [np.ascontiguousarray(digits.x_eval[i:i + 1]) for i in range(20)]

    async def serve(max_batch_size, policy, together, ahead=0):
        inst, batches = thread_instance(session), []
        run = inst.run
        inst.run = lambda b: (batches.append((threading.current_thread().name, len(b))), run(b))[1]
        b = Batcher([inst], max_batch_size, 50.0, policy, 64)
        b.start()
        try:
            if together:
                return await asyncio.gather(*(b.submit(x) for x in xs)), batches
            return [await b.submit(x, ahead) for x in xs], batches
        finally:
            await b.stop()

    main = threading.current_thread().name
    offline = session.run(np.concatenate(xs))
    batched, seen = asyncio.run(serve(8, "delay", True))
    assert all(name == main for name, _ in seen) and [n for _, n in seen] == [8, 8, 4], seen
    for max_batch_size, policy, ahead in ((1, "idle", 0), (8, "idle", 0), (8, "idle", 1), (8, "delay", 0)):
        inline, seen = asyncio.run(serve(max_batch_size, policy, False, ahead))
        assert seen == [(main, 1)] * len(xs)
        for i, (a, b) in enumerate(zip(inline, batched)):
            assert np.array_equal(a, b) and np.array_equal(a, offline[i:i + 1])


def test_a_slow_model_never_holds_the_event_loop(session, digits):
    """A model slower than INLINE_MAX_S per row leaves the inline path after a few requests, lone
    or batched: its compute runs on the instance's thread, so the loop stays free for probes and
    parsing; the answers are the session's."""
    import threading
    import time

    from workbench.serve.batcher import INLINE_MAX_S, Batcher, thread_instance

    xs = [np.ascontiguousarray(digits.x_eval[i:i + 1]) for i in range(20)]
    seen = []

    async def requests(max_batch_size, together):
        inst = thread_instance(session)
        run = inst.run
        inst.run = lambda b: (seen.append(threading.current_thread().name), time.sleep(5 * INLINE_MAX_S), run(b))[2]
        b = Batcher([inst], max_batch_size, 0.0, "idle", 64)
        b.start()
        try:
            if together:
                return await asyncio.gather(*(b.submit(x, 1) for x in xs))
            return [await b.submit(x) for x in xs]
        finally:
            await b.stop()

    main = threading.current_thread().name
    for max_batch_size, together in ((1, False), (2, True)):
        seen.clear()
        answers = asyncio.run(requests(max_batch_size, together))
        assert seen[0] == main and all(name != main for name in seen[5:]), seen
        for i, y in enumerate(answers):
            assert np.array_equal(y, session.run(xs[i]))


def test_a_model_with_several_named_inputs(tmp_path):
    """text_transformer: int32 ``tokens`` and ``mask``; JSON tensors matched by name.

    Its answers are not bit-exact: onnxruntime itself rounds the transformer's MatMuls
    differently at batch 2+ than at batch 1 (relative differences ~4e-6 offline, without any
    server), so the served answer equals the unbatched one to float rounding, with the same top-1."""
    from workbench.config.params import TrialParams
    from workbench.data import inputs
    from workbench.export.bundle import open_bundle, write_bundle
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "text_transformer", "data": "text"})
    data, _, artifact = artifact_for(p)
    b = write_bundle(tmp_path / "bundle", p, artifact, data)
    eng = start(b, tmp_path, max_batch_size=8, max_queue_delay_ms=20)
    s = open_bundle(b).session()
    try:
        meta = json.loads(get(f"{eng.url}/v2/models/model")[1])
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("tokens", "INT32"), ("mask", "INT32")]
        rows = [inputs.take(data.x_eval, i, i + 1 + i % 2) for i in range(24)]
        answers = asyncio.run(post_many(eng.infer_url, [protocol.request_json(x) for x in rows]))
        for x, (status, body, headers) in zip(rows, answers):
            assert status == 200, body
            y, alone = protocol.response_array(body, headers["content-type"]), s.run(x)
            np.testing.assert_allclose(y, alone, rtol=1e-4, atol=1e-7)
            assert np.array_equal(y.argmax(-1), alone.argmax(-1))
        one = inputs.take(data.x_eval, 0, 1)
        swapped = json.loads(protocol.request_json(one))
        swapped["inputs"].reverse()  # order does not matter, names do
        assert post(eng.infer_url, json.dumps(swapped).encode())[0] == 200
        missing = json.dumps({"inputs": swapped["inputs"][:1]}).encode()
        floats = protocol.request_json({k: v.astype(np.float32) for k, v in one.items()})
        for bad in (missing, floats, protocol.request_npy(one["tokens"])):
            status, body, _ = post(eng.infer_url, bad, protocol.NPY if bad[:1] == b"\x93" else "application/json")
            assert status == 400 and json.loads(body)["error"]
    finally:
        s.close()
        eng.stop()


@pytest.mark.parametrize("params", [
    dict(runtime="onnxruntime", threads=2, graph_optimization="basic"),
    dict(runtime="litert", bits=8, int8_mode="static"),
])
def test_serves_a_bundle_written_by_workbench_export(tmp_path, digits, params):
    """`workbench export`'s bundle, served: the session the trial measured, its answers under load."""
    from workbench import trial
    from workbench.config import TrialParams
    from workbench.export.bundle import open_bundle
    from workbench.export.run import export_trial

    m = trial.run({"warmup": 2, "min_runs": 5, "min_seconds": 0.05, "max_seconds": 2.0, **params})
    assert m["status"] == "complete", m.get("reason")
    out = export_trial(m, tmp_path / "bundle")
    b = open_bundle(out)
    assert b.params == TrialParams.parse(m["params"]) and b.inputs == digits.inputs
    eng = start(out, tmp_path, max_batch_size=8, max_queue_delay_ms=10)
    s = b.session()
    try:
        rows = [digits.x_eval[i:i + 1] for i in range(48)]
        answers = asyncio.run(post_many(eng.infer_url, [protocol.request_json(x) for x in rows]))
        served = np.concatenate([protocol.response_array(body, h["content-type"]) for _, body, h in answers])
        alone = np.concatenate([s.run(np.ascontiguousarray(x)) for x in rows])
        assert [a[0] for a in answers] == [200] * len(rows)
        np.testing.assert_allclose(served, alone, rtol=1e-5, atol=1e-6)
        assert np.array_equal(served.argmax(-1), alone.argmax(-1))
        if params["runtime"] == "onnxruntime":  # the CNN's rows are computed independently: bit-exact
            assert np.array_equal(served, alone)
    finally:
        s.close()
        eng.stop()


def test_serve_on_a_busy_port_is_one_line_before_serving(bundle):
    """A port another process listens on: one line, exit 2, and never "serving ... at"."""
    import socket

    from conftest import run_cli

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        res = run_cli("serve", str(bundle), "--port", str(port), "--ready-timeout", "20")
    assert res.returncode == 2, res.stderr
    assert "serving" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}: cannot listen there" in lines[0], res.stderr
    assert "--port" in lines[0]
