"""The endpoint under hostile input (issue 22), on loopback and bounded in time: a bundle that
tries to run code or read outside itself, malformed requests (400 with one line, never a 500),
header and connection limits, and a mixed crowd of clients that sees no connection errors."""

import json
import socket
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


# --- the builtin engine on loopback -------------------------------------------------------------

LIMITS = {"header_timeout": 2.0, "body_timeout": 2.0, "idle_timeout": 2.0, "max_connections": 150,
          "limit_concurrency": 140}


@pytest.fixture(scope="module")
def server(onnx_bundle, tmp_path_factory):
    from workbench.serve import ServeOptions, engine, free_port

    eng = engine("builtin", onnx_bundle, ServeOptions(port=free_port(), max_batch_size=8, max_queue_delay_ms=1,
                                                      extra={"limits": LIMITS}))
    eng.start(log=tmp_path_factory.mktemp("log") / "server.log")
    try:
        eng.wait_ready(120)
        yield eng
    finally:
        eng.stop()


def _post(url, body: bytes, content_type="application/json", headers: dict | None = None, timeout=20.0):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _one_line_error(status: int, body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error and "\n" not in error
    return error


GOOD = {"name": "input", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.0] * 64}


def _with(**fields) -> bytes:
    return json.dumps({"inputs": [{**GOOD, **fields}]}).encode()


def _data_with(value: str) -> bytes:
    return _with().replace(b"[0.0, ", b"[" + value.encode() + b", ", 1)


MALFORMED = {
    "2 tensor parameters 5": _with(parameters=5),
    "3 deep JSON": b"[" * 100_000 + b"]" * 100_000,
    "4 wrapping shape": _with(shape=[4611686018427387904, 4], data=[]),
    "4 5000-digit dimension": b'{"inputs":[{"name":"input","shape":[' + b"9" * 5000 + b',4],"datatype":"FP32","data":[]}]}',
    "4 boolean dimensions": _with(shape=[True, 8, 8, True]),
    "5 parameters list": json.dumps({"inputs": [GOOD], "parameters": [1]}).encode(),
    "5 outputs 5": json.dumps({"inputs": [GOOD], "outputs": 5}).encode(),
    "5 output parameters 5": json.dumps({"inputs": [GOOD], "outputs": [{"parameters": 5}]}).encode(),
    "14 NaN": _data_with("NaN"),
    "14 Infinity": _data_with("Infinity"),
    "14 null": _data_with("null"),
    "14 string": _data_with('"0.5"'),
    "14 true": _data_with("true"),
    "datatype list": _with(datatype=["FP32"]),
    "name list": _with(name=[1]),
    "id object": json.dumps({"inputs": [GOOD], "id": {"a": 1}}).encode(),
}


def test_malformed_requests_are_400_with_one_line_and_counted(server):
    """Rows 2-5 and 14: each a 400 with a one-line JSON error, never a 500, before inference."""
    before = server.metrics()
    for what, body in MALFORMED.items():
        status, answer = _post(server.infer_url, body)
        assert status == 400, (what, status, answer[:200])
        _one_line_error(status, answer)
    assert _post(server.infer_url, _with())[0] == 200
    after = server.metrics()
    key = "workbench_requests_failure_total{code=400}"
    assert after[key] - before.get(key, 0) == len(MALFORMED)
    assert after.get("workbench_requests_failure_total{code=500}", 0) == 0
    # nothing ran: the batches the server computed are its warm-up and the one valid request
    assert after["workbench_batch_size_count"] - before["workbench_batch_size_count"] == 1


def _raw(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.options.port), timeout=10)
    return s


def _read_all(s, limit: int = 1 << 16) -> bytes:
    out = b""
    try:
        while len(out) < limit:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    return out


def test_a_huge_header_is_431_after_a_bounded_read(server):
    """Row 1: the head is cut at the cap (32 KiB), not read to 128 MB; the server stays ready."""
    s = _raw(server)
    s.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, chunk = 0, b"a" * 65536
    try:
        while sent < 128 * 2**20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed it
        pass
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431") and b"connection: close" in answer.lower()
    assert sent < 16 * 2**20  # refused within a few chunks of the cap, not after the whole value
    assert server.ready()


def test_slow_and_idle_connections_are_closed(server):
    """Row 7: headers at 1 byte per 0.2 s get 408 after the header timeout; a body under the size
    limit sent slowly gets 408 after the body timeout; connect-only sockets are closed after the
    idle timeout; all the while valid requests are answered."""
    import time

    slow_head, slow_body, idle = _raw(server), _raw(server), [_raw(server) for _ in range(5)]
    slow_body.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
    t0, head = time.monotonic(), b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    for byte in head:
        try:
            slow_head.sendall(bytes([byte]))
            slow_body.sendall(b" ")
        except OSError:
            break
        time.sleep(0.2)
        if time.monotonic() - t0 > 10:
            break
    assert _post(server.infer_url, _with())[0] == 200
    for s, status in ((slow_head, b"408"), (slow_body, b"408")):
        answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
    for s in idle:
        s.settimeout(10)
        assert _read_all(s) == b""  # closed by the server, well before the 10 s read timeout
    assert time.monotonic() - t0 < 10 + LIMITS["idle_timeout"] + 5


def test_connections_beyond_the_limit_get_503(server):
    """Row 7: no more than max_connections at once; beyond, 503 and closed; then answers again."""
    import time

    socks = [_raw(server) for _ in range(LIMITS["max_connections"] + 8)]
    try:
        refused = 0
        for s in socks[LIMITS["max_connections"]:]:
            s.settimeout(5)
            answer = _read_all(s)
            refused += answer.startswith(b"HTTP/1.1 503")
        assert refused >= 8 - 1  # the probe of the fixture may still hold one connection
    finally:
        for s in socks:
            s.close()
    time.sleep(1)  # the server sees the closes (the next test wants its connections back)
    assert _post(server.infer_url, _with())[0] == 200


def test_64_clients_mixing_valid_and_invalid_requests(server, digits):
    """Row 6: no connection errors on valid requests; every invalid one is a counted 400."""
    before = server.metrics()
    _mixed_crowd(server, digits, list(MALFORMED.values()))
    after = server.metrics()
    key = "workbench_requests_failure_total{code=400}"
    assert after[key] - before.get(key, 0) == 64 * 4


def _mixed_crowd(server, digits, bad: list[bytes]) -> None:
    """64 keep-alive clients, 12 requests each, every third one from ``bad``: the valid ones all
    answered 200 with no connection error, the invalid ones all 400."""
    import asyncio

    import aiohttp

    from workbench.serve import protocol

    valid = [protocol.request_json(digits.x_eval[i:i + 1]) for i in range(64)]
    statuses: list[int] = []

    async def client(k: int, session) -> tuple[int, int, int]:
        ok = errors = invalid = 0
        for j in range(12):
            body = bad[(k + j) % len(bad)] if j % 3 == 2 else valid[(k + j) % len(valid)]
            try:
                async with session.post(server.infer_url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    statuses.append(r.status)
                    if j % 3 == 2:
                        invalid += r.status == 400
                    else:
                        ok += r.status == 200
            except aiohttp.ClientError:
                errors += 1
        return ok, errors, invalid

    async def run():
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as s:
            return await asyncio.gather(*(client(k, s) for k in range(64)))

    results = asyncio.run(run())
    assert sum(e for _, e, _ in results) == 0
    assert sum(o for o, _, _ in results) == 64 * 8 and sum(i for _, _, i in results) == 64 * 4, \
        sorted(set(statuses))


# --- the parser under random bodies (hypothesis) ------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from workbench.serve import protocol  # noqa: E402

SPECS = [(None, (8, 8, 1), "float32")]
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=40)
_field_values = st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES"]) | _json
_tensor = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["input", "x"]) | _json, "shape": st.lists(st.integers(-2, 2**64), max_size=5) | _json,
    "datatype": _field_values, "data": st.lists(st.floats() | st.integers() | _scalars, max_size=80) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 300) | _json,
                                                      "binary_data": _json}) | _json})
_request = st.fixed_dictionaries({}, optional={
    "inputs": st.lists(_tensor, max_size=3) | _json, "outputs": st.lists(st.dictionaries(
        st.sampled_from(["name", "parameters"]), _json, max_size=2), max_size=2) | _json,
    "parameters": _json, "id": _json})


def _parse(body: bytes, content_type: str = "application/json", headers: dict | None = None):
    try:
        x, header = protocol.parse(body, content_type, headers or {}, SPECS, 64)
    except protocol.BadRequest as err:
        assert str(err) and "\n" not in str(err)
        return None
    protocol.encode(np.zeros((len(x), 10), np.float32), header, "model", "output")  # what follows inference
    return x


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_request, st.binary(max_size=600), st.booleans())
def test_random_json_and_binary_bodies_are_answers_or_bad_requests(request, raw, binary):
    head = json.dumps(request, allow_nan=True).encode()
    if binary:
        _parse(head + raw, protocol.NPY, {protocol.HEADER_LENGTH: str(len(head))})
    else:
        _parse(head)
    _parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.sampled_from(["<f4", "<f8", ">f4", "|u1", "<i8", "|b1", "<U3", "|O"]),
       st.lists(st.integers(0, 9), max_size=5), st.binary(max_size=300), st.integers(0, 200))
def test_random_npy_bodies_are_answers_or_bad_requests(version, descr, shape, payload, cut):
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    body = b"\x93NUMPY" + bytes([max(version, 1), 0]) + len(header).to_bytes(2, "little") + header.encode() + payload
    _parse(body[: len(body) - cut] if cut < len(body) else body, protocol.NPY)
    x = np.random.default_rng(cut).random((1, 8, 8, 1)).astype(np.float32)
    x.flat[cut % 64] = [np.nan, np.inf, 0.5][version % 3]
    assert (_parse(protocol.request_npy(x), protocol.NPY) is None) == (version % 3 != 2)


@settings(max_examples=60, deadline=None)
@given(_request, st.binary(max_size=400))
def test_random_bodies_never_give_a_500_from_the_server(server, request, raw):
    """The same strategies against the live server: 400 or 200, and it keeps answering."""
    _answers_or_bad_requests(server, request, raw)


def _answers_or_bad_requests(eng, request, raw: bytes) -> None:
    for body in (json.dumps(request, allow_nan=True).encode(), raw):
        for ctype in ("application/json", protocol.NPY):
            status, answer = _post(eng.infer_url, body, ctype)
            assert status in (200, 400), (status, body[:200], answer[:200])


def test_the_server_still_answers_after_the_random_bodies(server):
    assert _post(server.infer_url, _with())[0] == 200
    assert server.metrics().get("workbench_requests_failure_total{code=500}", 0) == 0


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def default_server(onnx_bundle, tmp_path):
    from workbench.serve import ServeOptions, engine, free_port

    eng = engine("builtin", onnx_bundle, ServeOptions(port=free_port()))
    eng.start(log=tmp_path / "server.log")
    try:
        eng.wait_ready(120)
        yield eng
    finally:
        eng.stop()


def _large_bodies_at_once(server, digits) -> tuple[list[int], int]:
    """32 concurrent bodies near the 16 MiB limit, probing liveness while they are in flight:
    their statuses and the server's peak memory growth; asserts the growth is under the bodies."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from workbench.serve import protocol

    body = protocol.request_json(np.repeat(digits.x_eval[:1], 1000, axis=0))  # 1000 rows, ~1.4 MB
    body = protocol.request_json(np.repeat(digits.x_eval[:1], int(1000 * 15 * 2**20 / len(body)), axis=0))
    assert 8 * 2**20 < len(body) < 16 * 2**20
    base = _vm(server.proc.pid, "VmRSS")
    statuses: list[int] = []
    probes: list[float] = []

    def send():
        try:
            statuses.append(_post(server.infer_url, body, timeout=120)[0])
        except (urllib.error.URLError, OSError):  # a 503 sent before the body was read resets the send
            statuses.append(0)

    threads = [threading.Thread(target=send) for _ in range(32)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=30) as r:
            assert r.status == 200
        probes.append(time.perf_counter() - t0)
        time.sleep(0.2)
    for t in threads:
        t.join()
    peak = _vm(server.proc.pid, "VmHWM")
    print(f"row 8: probe max {max(probes):.3f} s over {len(probes)} probes; peak RSS growth "
          f"{(peak - base) / 2**20:.0f} MiB for 32 bodies of {len(body) / 2**20:.1f} MiB")
    assert peak - base < 32 * len(body)
    return statuses


@pytest.mark.slow
def test_large_bodies_at_once_keep_probes_fast_and_memory_bounded(default_server, digits):
    """Row 8: 32 concurrent bodies near the 16 MiB limit: two are read and parsed at a time, in a
    thread, a few wait, the rest get 503 before they are read. The liveness probe answers while
    they are in flight, and the server's peak memory grows by less than the 32 bodies themselves
    (parsing all at once took about 9 times that)."""
    statuses = _large_bodies_at_once(default_server, digits)
    assert statuses.count(400) >= 2 and set(statuses) <= {400, 503, 0}  # 400: over MAX_ROWS (1024), parsed
    assert default_server.metrics()["workbench_requests_failure_total{code=503}"] + statuses.count(400) == 32


@pytest.mark.slow
def test_large_bodies_at_once_on_kserve(onnx_bundle, tmp_path, digits):
    """Row 8 on the kserve engine: KServe parses a body whole on its event loop, so the guard in
    front of it lets two large bodies in at a time and refuses beyond six waiting (503), and the
    server's memory grows by less than the 32 bodies themselves."""
    _kserve_or_skip()
    eng = _start("kserve", onnx_bundle, tmp_path / "kserve.log")
    try:
        statuses = _large_bodies_at_once(eng, digits)
    finally:
        eng.stop()
    assert 503 in statuses or 0 in statuses  # refused before they were read, not all parsed at once
    assert set(statuses) <= {400, 503, 0} and statuses.count(400) >= 2  # 400: over MAX_ROWS, parsed


def test_a_slow_body_does_not_hold_sigterm(default_server):
    """Row 7: a body trickling in under the size limit no longer delays SIGTERM by 30 s: the
    graceful shutdown gives in-flight requests 5 s, then the server exits on its own."""
    import signal
    import time

    s = _raw(default_server)
    s.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
    time.sleep(0.5)
    # stop() SIGKILLs after 25 s: an exit code of the server's own says it drained by itself
    # (the old 30 s drain ended in SIGKILL); how long it took is not asserted on a shared machine
    code = default_server.stop(timeout=25)
    s.close()
    assert code in (0, -signal.SIGTERM), code


# --- symbolic links: a bundle reads nothing outside itself ---------------------------------------

def _copy_bundle(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_symbolic_link_out_of_the_bundle_is_refused(onnx_bundle, tmp_path):
    """A link is as good as an absolute path: one resolving outside the bundle (the artifact, or
    any other file or directory in it) is refused in one line naming it; one inside is fine."""
    outside = _copy_bundle(onnx_bundle, tmp_path / "outside")
    b = _copy_bundle(onnx_bundle, tmp_path / "b")
    (b / "model.onnx").unlink()
    (b / "model.onnx").symlink_to(outside / "model.onnx")
    with pytest.raises(BundleError) as err:
        open_bundle(b)
    assert len(str(err.value).splitlines()) == 1 and "model.onnx" in str(err.value) and "outside" in str(err.value)
    (b / "model.onnx").unlink()
    (b / "real").mkdir()
    (outside / "model.onnx").rename(b / "real" / "model.onnx")
    (b / "model.onnx").symlink_to(Path("real") / "model.onnx")  # inside: served
    assert open_bundle(b).artifact.path == b / "model.onnx"
    (b / "real" / "etc").symlink_to("/etc")  # a directory link out, even one the server never reads
    with pytest.raises(BundleError, match="etc"):
        open_bundle(b)


def test_the_server_trials_bundle_holds_no_symbolic_link(tmp_path, digits):
    """The minimal bundle a server trial serves is opened like any other: its artifact is a hard
    link to the cached file (not a copy) where the file system allows, never a symbolic link."""
    import os

    from workbench.config.params import TrialParams
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    _, _, artifact = artifact_for(p)
    b = write_bundle(tmp_path / "minimal", p, artifact, digits)
    assert not any(f.is_symlink() for f in b.rglob("*"))
    opened = open_bundle(b)
    assert os.path.samefile(opened.artifact.path, artifact.path)  # same file system here: no copy
    opened.session().close()


# --- authentication and exposure (guard.bearer_ok, guard.auth_token, guard.loopback) -------------

def test_bearer_ok():
    from workbench.serve.guard import bearer_ok

    assert bearer_ok(None, None) and bearer_ok("anything", "")  # no token: open
    assert bearer_ok("Bearer s3cret", "s3cret") and bearer_ok("bearer  s3cret", "s3cret")
    for wrong in (None, "", "s3cret", "Bearer", "Bearer s3cre", "Bearer s3cretX", "Basic s3cret", "Bearer S3CRET"):
        assert not bearer_ok(wrong, "s3cret"), wrong


def test_auth_token_comes_from_the_environment_only(monkeypatch):
    from workbench.core.errors import WorkbenchError
    from workbench.serve.guard import auth_token, loopback

    assert auth_token(None) is None
    monkeypatch.setenv("WB_HOSTILE_TOKEN", "t0k")
    assert auth_token("WB_HOSTILE_TOKEN") == "t0k"
    for value in ("", "  "):
        monkeypatch.setenv("WB_HOSTILE_TOKEN", value)
        with pytest.raises(WorkbenchError, match="WB_HOSTILE_TOKEN.*unset or empty"):
            auth_token("WB_HOSTILE_TOKEN")
    monkeypatch.delenv("WB_HOSTILE_TOKEN")
    with pytest.raises(WorkbenchError, match="unset or empty"):
        auth_token("WB_HOSTILE_TOKEN")
    assert loopback("127.0.0.1") and loopback("127.0.0.2") and loopback("::1") and loopback("localhost")
    assert not any(map(loopback, ("0.0.0.0", "::", "192.0.2.1", "example.org", "")))


def _cli(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_serve_refuses_a_missing_token_variable_and_warns_before_exposing(onnx_bundle):
    """--auth-token-env VAR: unset or empty is one line and exit code 2, before anything starts.
    A host that is not loopback is warned about on stderr before anything binds (192.0.2.1,
    TEST-NET, is on no interface here: the port check refuses it, nothing listens)."""
    for env in ({}, {"WB_HOSTILE_TOKEN": ""}):
        r = _cli("serve", str(onnx_bundle), "--auth-token-env", "WB_HOSTILE_TOKEN", env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "WB_HOSTILE_TOKEN" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = _cli("serve", str(onnx_bundle), "--host", "192.0.2.1", "--port", "9")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0].startswith("warning: --host 192.0.2.1") and "--auth-token-env" in lines[0]
    assert lines[1].startswith("error: 192.0.2.1:9: cannot listen there")


TOKEN_VAR, TOKEN = "WB_HOSTILE_TOKEN", "hostile-test-token"


def _kserve_or_skip():
    from workbench.serve import kserve

    if not kserve.available():
        pytest.skip(kserve.unavailable_reason())


def _start(engine_name: str, bundle: Path, log: Path, **options):
    from workbench.serve import ServeOptions, engine, free_port

    eng = engine(engine_name, bundle, ServeOptions(port=free_port(), **options))
    eng.start(log=log)
    try:
        eng.wait_ready(180)
    except Exception:
        eng.stop()
        raise
    return eng


@pytest.fixture(scope="module", params=["builtin", "kserve"])
def token_server(request, onnx_bundle, tmp_path_factory):
    import os

    if request.param == "kserve":
        _kserve_or_skip()
    os.environ[TOKEN_VAR] = TOKEN  # the server reads it from its environment, never its argv
    try:
        eng = _start(request.param, onnx_bundle, tmp_path_factory.mktemp("log") / "server.log",
                     auth_token_env=TOKEN_VAR)
    finally:
        del os.environ[TOKEN_VAR]
    yield eng
    eng.stop()


def _http(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 20.0):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def test_the_bearer_token_guards_every_route_but_health(token_server):
    import psutil

    eng = token_server
    server = psutil.Process(eng.proc.pid)
    cmdlines = [" ".join(p.cmdline()) for p in [server, *server.children(True)]]
    assert not any(TOKEN in c for c in cmdlines)  # the variable's name travels, not the token
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/model/ready"):
        assert _http(eng.url + path)[0] == 200, path
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path, body in (("/v2/models/model/infer", _with()), ("/v2/models/model", None), ("/metrics", None),
                       ("/v2/models/model/infer", b"not json")):
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
            status, answer, h = _http(eng.url + path, body, headers)
            assert status == 401 and h["www-authenticate"] == "Bearer", (path, headers, status)
            assert "bearer token" in _one_line_error(status, answer)
    assert _http(eng.url + "/v2/models/model/infer", _with(), good)[0] == 200
    assert _http(eng.url + "/v2/models/model", None, good)[0] == 200
    assert _http(eng.url + "/v2/models/model/infer", b"not json", good)[0] == 400  # past the token: the parser


# --- uvicorn's own limit_concurrency answers in JSON --------------------------------------------

def test_the_concurrency_limit_503_is_one_line_json(server):
    """Over uvicorn's limit_concurrency (140 here, under max_connections 150) a request gets 503
    in one line of JSON (uvicorn's own was plain text), and the connection is closed."""
    import time

    socks = [_raw(server) for _ in range(LIMITS["limit_concurrency"] + 2)]
    try:
        s = socks[-1]
        s.settimeout(10)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(s)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"content-type: application/json" in head.lower(), answer[:300]
        assert b"connection: close" in head.lower()
        assert "concurrency" in _one_line_error(503, body)
    finally:
        for s in socks:
            s.close()
    time.sleep(1)
    assert _post(server.infer_url, _with())[0] == 200


# --- the kserve engine behind the same guards (rows 11-13, and row 1) -----------------------------

@pytest.fixture(scope="module")
def kserve_server(onnx_bundle, tmp_path_factory):
    _kserve_or_skip()
    eng = _start("kserve", onnx_bundle, tmp_path_factory.mktemp("log") / "kserve.log", extra={"limits": LIMITS})
    yield eng
    eng.stop()


@pytest.fixture(params=["builtin", "kserve"])
def either_server(request):
    return request.getfixturevalue("server" if request.param == "builtin" else "kserve_server")


def test_a_huge_header_is_431_on_either_engine(either_server):
    """Row 1 on both engines: the kserve engine runs the same guarded uvicorn protocol."""
    test_a_huge_header_is_431_after_a_bounded_read(either_server)


def test_kserve_closes_slow_and_idle_connections_and_caps_them(kserve_server):
    """Row 7 on the kserve engine (same limits as the builtin fixture's): 408 for a slow head
    and a slow body, idle sockets closed, 503 in JSON beyond the connection and concurrency caps."""
    test_slow_and_idle_connections_are_closed(kserve_server)
    test_connections_beyond_the_limit_get_503(kserve_server)
    test_the_concurrency_limit_503_is_one_line_json(kserve_server)


def _send_until_refused(server, head: bytes, total: int, chunked: bool = False) -> tuple[bytes, int]:
    s = _raw(server)
    s.sendall(head)
    sent, chunk = 0, b"[" + b"0," * 32767 + b"0"
    try:
        while sent < total:
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
    except OSError:  # the server answered and closed it
        pass
    answer = _read_all(s)
    s.close()
    return answer, sent


def test_a_150_mb_body_is_400_before_it_is_read(either_server):
    """Row 11: a 150 MB JSON body (declared, or chunked without a length) is refused with 400 and
    the connection closed, after at most about the 16 MiB limit; the server's peak memory does not
    follow the body, and it keeps answering."""
    server = either_server
    base = _vm(server.proc.pid, "VmHWM")
    url = f"/v2/models/{server.options.name}/infer".encode()
    for chunked in (False, True):
        length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (150 * 2**20)
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n\r\n" % (url, length)
        answer, sent = _send_until_refused(server, head, 150 * 2**20, chunked)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 400"), (chunked, answer[:300])
        assert b"connection: close" in rest.lower()
        assert "limit" in _one_line_error(400, rest.partition(b"\r\n\r\n")[2])
        assert sent < 40 * 2**20, (chunked, sent)
    growth = _vm(server.proc.pid, "VmHWM") - base
    print(f"row 11 ({server.name}): peak RSS growth {growth / 2**20:.0f} MiB")
    assert growth < 100 * 2**20
    assert _post(server.infer_url, _with())[0] == 200


def test_the_kserve_model_repository_is_off(kserve_server):
    """Row 12: KServe's /v2/repository routes (unload!) and its other routes are 404 with one
    line; the model stays loaded and answers."""
    eng = kserve_server
    for path in ("/v2/repository/models/model/unload", "/v2/repository/models/model/load", "/v2/repository/index",
                 "/v2/%72epository/models/model/unload", "/v1/models/model:predict", "/docs",
                 "/v2/models/model/versions/1/infer"):
        status, answer, _ = _http(eng.url + path, b"{}")
        assert status == 404, (path, status, answer[:200])
        _one_line_error(status, answer)
    assert _http(f"{eng.url}/v2/models/model/ready")[0] == 200
    assert _post(eng.infer_url, _with())[0] == 200


def _binary(x: np.ndarray, datatype: str = "FP32", size: int | None = None) -> tuple:
    """A v2 binary-data request (body, content type, headers) whose declared size may lie."""
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": size or len(raw)}}]}).encode()
    return head + raw, "application/octet-stream", {"Inference-Header-Content-Length": str(len(head))}


def test_kserve_refuses_a_wrong_shape_or_datatype_with_400(kserve_server, onnx_bundle, digits):
    """Row 13: a wrong shape, a datatype other than the model's (FP64 into FP32: no silent cast),
    data that does not fill the shape, NaN, strings, booleans or null in FP32 data (KServe cast
    them), a binary body shorter than declared (KServe's decoding: 500): 400 with one line,
    before onnxruntime sees it; a valid request answers exactly what the session does."""
    eng = kserve_server
    for what, body in {"shape": _with(shape=[1, 64]), "rank": _with(shape=[64], data=[0.0] * 64),
                       "FP64": _with(datatype="FP64"), "INT64": _with(datatype="INT64", data=[0] * 64),
                       "short data": _with(data=[0.0]), "NaN": _data_with("NaN"),
                       "two tensors": json.dumps({"inputs": [GOOD, GOOD]}).encode(),
                       "no rows": _with(shape=[0, 8, 8, 1], data=[]), "string": _data_with('"0.5"'),
                       "true": _data_with("true"), "null": _data_with("null"),
                       "parameters 5": _with(parameters=5), "deep JSON": MALFORMED["3 deep JSON"],
                       "binary short": _binary(np.zeros((1, 8, 8, 1), np.float32), size=100),
                       "binary FP64": _binary(np.zeros((1, 8, 8, 1)), datatype="FP64")}.items():
        status, answer = _post(eng.infer_url, *body) if isinstance(body, tuple) else _post(eng.infer_url, body)
        assert status == 400, (what, status, answer[:200])
        error = _one_line_error(status, answer)
        assert "onnxruntime" not in error.lower() and "INVALID_ARGUMENT" not in error, (what, error)
    from workbench.serve import protocol

    x = np.ascontiguousarray(digits.x_eval[:3])
    status, answer = _post(eng.infer_url, protocol.request_json(x))
    session = open_bundle(onnx_bundle).session()
    try:
        assert status == 200 and np.array_equal(protocol.response_array(answer, "application/json"), session.run(x))
        status, answer = _post(eng.infer_url, *_binary(x))  # the binary-data extension still answers
        assert status == 200 and np.array_equal(protocol.response_array(answer, "application/json"), session.run(x))
    finally:
        session.close()


def test_kserve_answers_the_malformed_rows_with_400(kserve_server):
    """Rows 2-5 and 14 on the kserve engine: 400 with one line (KServe's own validation, in the
    workbench's form, then the same checks as the builtin engine's). One difference: pydantic reads
    the shape [true, 8, 8, true] as [1, 8, 8, 1], which its 64 values then fill: answered."""
    for what, body in MALFORMED.items():
        status, answer = _post(kserve_server.infer_url, body)
        assert status == (200 if what == "4 boolean dimensions" else 400), (what, status, answer[:200])
        if status == 400:
            _one_line_error(status, answer)


def test_64_clients_mixing_valid_and_invalid_requests_on_kserve(kserve_server, digits):
    """Row 6 on the kserve engine: no connection errors; the invalid ones (all but the boolean
    shape, which pydantic reads as a valid one) 400."""
    _mixed_crowd(kserve_server, digits, [b for k, b in MALFORMED.items() if k != "4 boolean dimensions"])


@settings(max_examples=60, deadline=None)
@given(_request, st.binary(max_size=400))
def test_random_bodies_never_give_a_500_from_kserve(kserve_server, request, raw):
    """The parser's strategies against the kserve engine: an answer or a 4xx, never a 500."""
    _answers_or_bad_requests(kserve_server, request, raw)
