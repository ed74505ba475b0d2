"""The Open Inference Protocol over gRPC (``workbench serve --grpc-port``) on loopback: KServe's
own client gets REST's answers, bad requests are INVALID_ARGUMENT, REST and gRPC share one
batcher, the bearer token, SIGTERM drains gRPC calls too and leaves no process."""

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from google.protobuf import descriptor_pb2
from test_serve import bundle, group_gone, post, session, start  # noqa: F401 - shared fixtures

from workbench.serve import free_port, kserve, protocol
from workbench.serve.app import Options, build_app
from workbench.serve.grpc_predict_v2_pb2 import (
    DESCRIPTOR,
    ModelInferRequest,
    ModelMetadataRequest,
    ModelReadyRequest,
    ServerLiveRequest,
    ServerMetadataRequest,
    ServerReadyRequest,
)
from workbench.serve.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

CLIENT = Path(__file__).with_name("grpc_kserve_client.py")
needs_kserve = pytest.mark.skipif(not kserve.available(), reason=kserve.unavailable_reason() or "")


def kserve_client(target: str, x: np.ndarray, token: str | None = None) -> dict:
    """What KServe's InferenceGRPCClient, in its own environment, got from the server."""
    args = {"target": target, "model": "model", "token": token,
            "x": {"shape": list(x.shape), "data": x.reshape(-1).tolist()}}
    r = subprocess.run([str(kserve.python()), str(CLIENT)], input=json.dumps(args), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@needs_kserve
def test_kserve_grpc_client_gets_the_rest_answer(bundle, tmp_path, digits):  # noqa: F811
    eng = start(bundle, tmp_path, grpc_port=free_port(), max_batch_size=8, max_queue_delay_ms=1)
    try:
        x = np.ascontiguousarray(digits.x_eval[:3])
        status, body, headers = post(eng.infer_url, protocol.request_json(x))
        assert status == 200
        rest = protocol.response_array(body, headers["content-type"], headers)
        got = kserve_client(eng.grpc_target, x)
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(eng.proc.pid).net_connections()
                     if c.status == psutil.CONN_LISTEN}
    finally:
        eng.stop()
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["metadata"] == {"name": "model", "inputs": [["input", "FP32", [-1, *digits.input_shape]]]}
    assert got["server"]["name"] == "workbench"
    for form in ("raw", "typed"):  # raw_input_contents and typed contents: the same answer as REST
        out = got[form]
        assert out["id"] == "r1" and out["name"] == "output" and out["datatype"] == "FP32"
        assert out["shape"] == list(rest.shape)
        assert np.array_equal(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), rest)
    codes = {k: v[0] for k, v in got["bad"].items()}
    assert codes == {"wrong_shape": "INVALID_ARGUMENT", "too_few_values": "INVALID_ARGUMENT",
                     "wrong_datatype": "INVALID_ARGUMENT", "not_a_datatype": "INVALID_ARGUMENT",
                     "nan": "INVALID_ARGUMENT", "raw_short": "INVALID_ARGUMENT", "no_inputs": "INVALID_ARGUMENT",
                     "unknown_model": "NOT_FOUND"}
    assert all("\n" not in v[1] and v[1] for v in got["bad"].values())  # one line each
    assert "NaN" in got["bad"]["nan"][1] and "FP64" in got["bad"]["wrong_datatype"][1]
    # both on REST's loopback host (grpc listens on an IPv6 socket: 127.0.0.1 as ::ffff:127.0.0.1)
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} == {eng.options.port, eng.options.grpc_port}
    assert eng.proc.returncode in (0, -signal.SIGTERM) and group_gone(eng.proc.pid)  # drained (not stop's SIGKILL)


@needs_kserve
def test_the_proto_is_kserves():
    """The committed .proto compiles to exactly the messages and service kserve 0.21 ships."""
    code = ("import sys; from google.protobuf import descriptor_pb2 as d; "
            "from kserve.protocol.grpc import grpc_predict_v2_pb2 as m; f = d.FileDescriptorProto(); "
            "m.DESCRIPTOR.CopyToProto(f); sys.stdout.buffer.write(f.SerializeToString())")
    theirs = descriptor_pb2.FileDescriptorProto.FromString(
        subprocess.run([str(kserve.python()), "-c", code], capture_output=True, check=True, timeout=120).stdout)
    ours = descriptor_pb2.FileDescriptorProto()
    DESCRIPTOR.CopyToProto(ours)
    ours.name = theirs.name
    assert ours == theirs


def infer_request(x, **kw):
    r = ModelInferRequest(model_name=kw.pop("model", "model"), id=kw.pop("id", ""))
    t = r.inputs.add(name="input", datatype=kw.pop("datatype", "FP32"), shape=kw.pop("shape", list(x.shape)))
    if kw.pop("raw", False):
        r.raw_input_contents.append(x.tobytes())
    else:
        getattr(t.contents, kw.pop("field", "fp32_contents")).extend(x.reshape(-1).tolist())
    assert not kw
    return r


def in_process(bundle_path, token=None, **opts):
    """The builtin app's lifespan on this event loop (REST routes unused): its gRPC service."""
    port = free_port()
    app = build_app(str(bundle_path), Options(grpc_port=port, instance_kind="thread", **opts), "127.0.0.1", token)
    return app, f"127.0.0.1:{port}"


async def status(call):
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_bad_requests_are_invalid_argument(bundle, session, digits):  # noqa: F811
    x = np.ascontiguousarray(digits.x_eval[:2])
    shape = list(x.shape)
    row_bytes = x[0].nbytes  # the message cap: above MAX_ROWS + 1 rows, below 1200

    async def run():
        app, target = in_process(bundle, max_body_bytes=1100 * row_bytes)
        async with app.lifespan_context(app), grpc.aio.insecure_channel(target) as ch:
            stub = GRPCInferenceServiceStub(ch)
            ok = await stub.ModelInfer(infer_request(x, id="a"))
            ok_raw = await stub.ModelInfer(infer_request(x, raw=True))
            two_raw = infer_request(x, raw=True)
            two_raw.raw_input_contents.append(b"")
            both = infer_request(x)
            both.raw_input_contents.append(x.tobytes())
            bad = {
                "negative dimension": infer_request(x, shape=[-2, *shape[1:]]),
                "too many dimensions": infer_request(x, shape=[1] * 40),
                "a huge shape": infer_request(x, shape=[2**62, 2**62]),
                "int contents for FP32": infer_request(x.astype(np.int64), field="int64_contents"),
                "FP16 as typed contents": infer_request(x, datatype="FP16"),
                "INT8 out of range": infer_request(np.full(shape, 300, np.int64), datatype="INT8", field="int_contents"),
                "infinite": infer_request(np.full_like(x, np.inf)),
                "infinite raw": infer_request(np.full_like(x, np.inf), raw=True),
                "FP64 raw for an FP32 input": infer_request(x.astype(np.float64), datatype="FP64", raw=True),
                "too many rows": infer_request(np.zeros([1025, *shape[1:]], np.float32), raw=True),
                "two raw for one input": two_raw,
                "raw and contents": both,
            }
            codes = {k: await status(stub.ModelInfer(v)) for k, v in bad.items()}
            as_bytes = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # no serializer: bytes sent as they are
            for what, raw in (("not protobuf", b"\xff\xff\xff\xff"), ("a truncated field", b"\x0a\x10ab")):
                codes[what] = await status(as_bytes(raw))
            unimplemented = await status(ch.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")(b""))
            big = await status(stub.ModelInfer(infer_request(np.zeros([1200, *shape[1:]], np.float32), raw=True)))
            after = await stub.ModelInfer(infer_request(x))  # still serving
        return ok, ok_raw, codes, big, after, unimplemented

    ok, ok_raw, codes, big, after, unimplemented = asyncio.run(run())
    want = session.run(x)
    assert ok.id == "a" and not ok.raw_output_contents and list(ok.outputs[0].shape) == list(want.shape)
    assert np.array_equal(np.asarray(ok.outputs[0].contents.fp32_contents, np.float32).reshape(want.shape), want)
    assert np.array_equal(np.frombuffer(ok_raw.raw_output_contents[0], "<f4").reshape(want.shape), want)
    assert np.array_equal(np.asarray(after.outputs[0].contents.fp32_contents, np.float32).reshape(want.shape), want)
    for what, (code, details) in codes.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
        assert details and "\n" not in details, what
    assert big[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # over max_body_bytes: refused before parsing
    assert unimplemented[0] == grpc.StatusCode.UNIMPLEMENTED  # KServe's repository calls: not served


def test_calls_beyond_max_connections_are_resource_exhausted(bundle, digits):  # noqa: F811
    x = np.ascontiguousarray(digits.x_eval[:1])

    async def run():
        app, target = in_process(bundle, limits={"max_connections": 2}, max_batch_size=8,
                                 max_queue_delay_ms=1000, batch_policy="delay")
        async with app.lifespan_context(app), grpc.aio.insecure_channel(target) as ch:
            stub = GRPCInferenceServiceStub(ch)
            return await asyncio.gather(*(status(stub.ModelInfer(infer_request(x), timeout=30)) for _ in range(4)))

    codes = sorted(code.name for code, _ in asyncio.run(run()))
    assert codes == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]


def test_rest_and_grpc_share_one_batcher(bundle, tmp_path, digits, session):  # noqa: F811
    """With a long batching delay, one REST and one gRPC request leave in one batch of two."""
    eng = start(bundle, tmp_path, grpc_port=free_port(), max_batch_size=2, max_queue_delay_ms=60_000,
                batch_policy="delay")
    x = np.ascontiguousarray(digits.x_eval[:1])

    async def both():
        async with grpc.aio.insecure_channel(eng.grpc_target) as ch:
            rpc = GRPCInferenceServiceStub(ch).ModelInfer(infer_request(x), timeout=60)
            rest = asyncio.to_thread(post, eng.infer_url, protocol.request_json(x))
            return await asyncio.gather(rpc, rest)

    try:
        before = eng.metrics()
        answer, (code, body, headers) = asyncio.run(both())
        after = eng.metrics()
    finally:
        eng.stop()
    assert code == 200
    want = session.run(x)
    assert np.array_equal(protocol.response_array(body, headers["content-type"], headers), want)
    assert np.array_equal(np.asarray(answer.outputs[0].contents.fp32_contents, np.float32).reshape(want.shape), want)
    assert after["workbench_batch_size_count"] - before["workbench_batch_size_count"] == 1
    assert after["workbench_batch_size_sum"] - before["workbench_batch_size_sum"] == 2
    assert after["workbench_requests_success_total"] - before["workbench_requests_success_total"] == 2


def test_bearer_token_on_every_call_but_the_health_probes(bundle, digits):  # noqa: F811
    x = np.ascontiguousarray(digits.x_eval[:1])
    token = "s3cret-token"

    async def run():
        app, target = in_process(bundle, token)
        async with app.lifespan_context(app), grpc.aio.insecure_channel(target) as ch:
            stub = GRPCInferenceServiceStub(ch)
            good = (("authorization", f"Bearer {token}"),)
            out = {}
            for auth, md in (("none", None), ("wrong", (("authorization", f"Bearer {token}x"),)),
                             ("not bearer", (("authorization", token),)), ("good", good)):
                out[auth] = {
                    "ServerLive": await status(stub.ServerLive(ServerLiveRequest(), metadata=md)),
                    "ServerReady": await status(stub.ServerReady(ServerReadyRequest(), metadata=md)),
                    "ModelReady": await status(stub.ModelReady(ModelReadyRequest(name="model"), metadata=md)),
                    "ServerMetadata": await status(stub.ServerMetadata(ServerMetadataRequest(), metadata=md)),
                    "ModelMetadata": await status(stub.ModelMetadata(ModelMetadataRequest(name="model"), metadata=md)),
                    "ModelInfer": await status(stub.ModelInfer(infer_request(x), metadata=md)),
                }
        return out

    out = asyncio.run(run())
    open_calls = {"ServerLive", "ServerReady", "ModelReady"}
    for auth, codes in out.items():
        for call, (code, _) in codes.items():
            expected = grpc.StatusCode.OK if auth == "good" or call in open_calls else grpc.StatusCode.UNAUTHENTICATED
            assert code == expected, (auth, call, code)


def test_auth_token_env_guards_grpc_as_it_guards_rest(bundle, tmp_path, digits, monkeypatch):  # noqa: F811
    """``workbench serve --auth-token-env VAR --grpc-port P``: the one token from the server's
    environment guards REST and gRPC alike (health probes open), through the CLI's own wiring."""
    token = "t0ken-from-env"
    monkeypatch.setenv("WB_TEST_GRPC_TOKEN", token)
    eng = start(bundle, tmp_path, grpc_port=free_port(), auth_token_env="WB_TEST_GRPC_TOKEN")
    x = np.ascontiguousarray(digits.x_eval[:1])

    async def calls():
        async with grpc.aio.insecure_channel(eng.grpc_target) as ch:
            stub = GRPCInferenceServiceStub(ch)
            good = (("authorization", f"Bearer {token}"),)
            return (await status(stub.ServerReady(ServerReadyRequest())),
                    await status(stub.ModelInfer(infer_request(x))),
                    await status(stub.ModelInfer(infer_request(x), metadata=good)))

    try:
        ready, anonymous, authorized = asyncio.run(asyncio.wait_for(calls(), 60))
        rest_anonymous = post(eng.infer_url, protocol.request_json(x))[0]
    finally:
        eng.stop()
    assert ready[0] == grpc.StatusCode.OK and authorized[0] == grpc.StatusCode.OK
    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED and rest_anonymous == 401


def test_sigterm_answers_the_grpc_call_in_flight_and_exits(bundle, tmp_path, digits, session):  # noqa: F811
    """A call waiting in the batcher when SIGTERM comes is answered; the server exits by itself
    (uvicorn re-raises the SIGTERM it handled), leaving no process."""
    eng = start(bundle, tmp_path, grpc_port=free_port(), max_batch_size=8, max_queue_delay_ms=1500,
                batch_policy="delay")
    x = np.ascontiguousarray(digits.x_eval[:1])

    async def call_then_term():
        async with grpc.aio.insecure_channel(eng.grpc_target) as ch:
            stub = GRPCInferenceServiceStub(ch)
            await stub.ServerReady(ServerReadyRequest())  # connected
            rpc = asyncio.ensure_future(stub.ModelInfer(infer_request(x), timeout=30))
            while parse_pending(eng) < 1:  # queued in the batcher
                await asyncio.sleep(0.02)
            eng.proc.send_signal(signal.SIGTERM)
            return await rpc

    try:
        answer = asyncio.run(asyncio.wait_for(call_then_term(), 60))
        eng.proc.wait(30)
    finally:
        eng.stop()
    want = session.run(x)
    assert np.array_equal(np.asarray(answer.outputs[0].contents.fp32_contents, np.float32).reshape(want.shape), want)
    assert eng.proc.returncode in (0, -signal.SIGTERM) and group_gone(eng.proc.pid)  # drained (not stop's SIGKILL)


def parse_pending(eng) -> float:
    return eng.metrics().get("workbench_pending_requests", 0.0)


def test_grpc_port_refused_in_one_line(bundle, tmp_path):  # noqa: F811
    from conftest import run_cli

    port = free_port()
    r = run_cli("serve", str(bundle), "--port", str(port), "--grpc-port", str(port))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--grpc-port" in r.stderr
    r = run_cli("serve", str(bundle), "--engine", "kserve", "--port", str(free_port()), "--grpc-port", str(free_port()))
    assert r.returncode == 2 and "--grpc-port" in r.stderr and "Traceback" not in r.stderr
