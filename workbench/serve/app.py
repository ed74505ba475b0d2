"""The builtin serving engine: uvicorn (uvloop, httptools) + the dynamic batcher; the infer route
is plain ASGI, the other routes Starlette.

Run as its own process (``python -m workbench.serve.app BUNDLE --port P ...``); the engine in
:mod:`workbench.serve.engines` starts it in a process group of its own and stops it. SIGTERM
drains: uvicorn stops accepting, in-flight requests are answered, then the batcher stops. With
``--parent-pid`` the server also exits when that process is gone (a sweep killed with SIGKILL
leaves no server behind). With ``grpc_port`` in the options, the v2 gRPC service
(:mod:`workbench.serve.grpc_server`) runs on the same event loop and batcher, and stops after REST.

Hostile input: limits before parsing are :mod:`workbench.serve.guard`'s (header size, read
deadlines, connections); a body over ``max_body_bytes`` is refused before it is read; a body over
``guard.LARGE_BODY`` is read and parsed by at most ``guard.LARGE_AT_ONCE`` requests at a time, its JSON in a
thread, so that one client's 16 MiB bodies neither hold the event loop (health probes stay fast)
nor multiply the memory (parsing JSON takes about 9 times the body); beyond ``guard.LARGE_WAITING``
waiting their turn, a large body gets 503 before it is read. Anything malformed is a 400 (:mod:`workbench.serve.protocol`); an error
the server did not expect is still an answer: a one-line 500 on a connection that stays usable,
counted in ``workbench_requests_failure_total``, its traceback in the server's log (stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workbench.core.errors import WorkbenchError
from workbench.export.bundle import open_bundle
from workbench.serve import grpc_server, guard, protocol, watch_parent
from workbench.serve.batcher import Batcher, QueueFull, process_instance, releases_gil, thread_instance
from workbench.serve.metrics import ServerMetrics

log = logging.getLogger("workbench.serve")
_HEADER_LENGTH = protocol.HEADER_LENGTH.encode()


@dataclass
class Options:
    name: str = "model"
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    batch_policy: str = "delay"
    max_queue: int = 256
    instances: int = 1
    threads: int | None = None  # intra-op threads per instance (default: the bundle's)
    instance_kind: str = "auto"  # thread | process | auto (threads if run() releases the GIL)
    max_body_bytes: int = 16 * 2**20
    trust_model_code: bool = False  # from the operator's command line only (see open_bundle)
    auth_token_env: str | None = None  # the variable holding the bearer token (guard.auth_token)
    limits: dict = field(default_factory=dict)  # guard.Limits fields
    grpc_port: int | None = None  # also serve v2 over gRPC there (workbench.serve.grpc_server)


def _error(status: int, message: str, close: bool = False) -> Response:
    """``guard.refusal`` as a Starlette response, for the routes Starlette serves."""
    status, body, headers = guard.refusal(status, message, close)
    return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})


class _Refused(Exception):
    """The infer route refuses the request: ``guard.refusal``'s arguments."""


def build_app(bundle_path: str, opts: Options, host: str = "127.0.0.1", auth_token: str | None = None) -> Callable:
    """The ASGI app serving ``bundle_path`` under ``opts.name``; with ``opts.grpc_port``, the
    gRPC service too, on ``host`` (REST's), sharing the batcher, its calls but the health probes
    requiring ``auth_token`` when given (REST's routes get the same token from :class:`guard.Gate`,
    put in front of this app by :func:`main`)."""
    bundle = open_bundle(bundle_path, opts.trust_model_code)
    metrics = ServerMetrics()
    state: dict = {"ready": False}
    large = asyncio.Semaphore(guard.LARGE_AT_ONCE)
    large_count = [0]  # large bodies being read, parsed or waiting to be

    @contextlib.asynccontextmanager
    async def lifespan(app):
        first = bundle.session(opts.threads)
        sample = bundle.zeros(1)
        y = np.asarray(first.run(sample))
        kind = opts.instance_kind
        if kind == "auto":
            kind = "thread" if releases_gil(lambda: first.run(sample)) else "process"
        if kind == "thread":
            sessions = [first] + [bundle.session(opts.threads) for _ in range(opts.instances - 1)]
            instances = [thread_instance(s) for s in sessions]
        else:
            first.close()
            instances = [process_instance(str(bundle.path), opts.threads, opts.trust_model_code) for _ in range(opts.instances)]
        batcher = Batcher(instances, opts.max_batch_size, opts.max_queue_delay_ms, opts.batch_policy,
                          opts.max_queue, observe=metrics.observe_batch)
        batcher.start()
        await batcher.submit(sample)  # the model answers through the batcher before we say ready
        metrics.pending.set_function(lambda: batcher.pending)
        metrics.depth.set_function(lambda: len(batcher.queue))
        state.update(batcher=batcher, instance_kind=kind, output_shape=list(y.shape[1:]),
                     output_dtype=protocol.datatype_of(y.dtype))
        rpc = None
        if opts.grpc_port is not None:  # listening before REST says ready
            model = grpc_server.Model(opts.name, bundle.inputs, protocol.MAX_ROWS, lambda: state["ready"],
                                      lambda: state["batcher"], metadata, metrics)
            rpc = await grpc_server.start(model, host, opts.grpc_port, auth_token, opts.max_body_bytes,
                                          guard.Limits(**opts.limits))
        state["ready"] = True
        yield
        state["ready"] = False
        if rpc is not None:  # REST has drained; gRPC calls in flight get their answers too
            await rpc.stop(grpc_server.GRACE)
        await batcher.stop()

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    def _model(request: Request) -> str | None:
        return request.path_params["model"] if request.path_params["model"] == opts.name else None

    async def model_ready(request: Request) -> Response:
        if not _model(request):
            return _error(404, f"unknown model {request.path_params['model']!r}")
        return JSONResponse({"name": opts.name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    def metadata() -> dict:
        p = bundle.params
        return {
            "name": opts.name, "versions": ["1"], "platform": f"{p.runtime}_{bundle.artifact.format}",
            "inputs": [{"name": name or "input", "datatype": protocol.datatype_of(np.dtype(dtype)),
                        "shape": [-1, *shape]} for name, shape, dtype in bundle.inputs],
            "outputs": [{"name": "output", "datatype": state.get("output_dtype", "FP32"),
                         "shape": [-1, *state.get("output_shape", [])]}],
            "parameters": {"engine": "builtin", "max_batch_size": opts.max_batch_size,
                           "max_queue_delay_ms": opts.max_queue_delay_ms, "batch_policy": opts.batch_policy,
                           "max_queue": opts.max_queue, "instances": opts.instances,
                           "instance_kind": state.get("instance_kind"),
                           "threads": opts.threads or p.threads, "label": p.describe()},
        }

    async def model_meta(request: Request) -> Response:
        if not _model(request):
            return _error(404, f"unknown model {request.path_params['model']!r}")
        return JSONResponse(metadata())

    async def infer(scope: dict, receive: Callable, send: Callable) -> None:
        """POST /v2/models/{name}/infer, as plain ASGI: Starlette's Request and Response objects
        cost more per request than the model on a small one (benchmarks/serving.md)."""
        t0 = time.perf_counter()
        try:
            body, headers = await _infer(scope, receive)
            status = 200
        except _Refused as refused:
            status, body, headers = guard.refusal(*refused.args)
        except Exception as err:  # noqa: BLE001 - a bug, not the client's: answered, counted, logged
            log.exception("infer failed")
            status, body, headers = guard.refusal(500, f"internal error: {type(err).__name__}")
        if status == 200:
            metrics.success += 1
            metrics.request.observe(time.perf_counter() - t0)
        else:
            metrics.add_failure(status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _infer(scope: dict, receive: Callable) -> tuple[bytes, list]:
        """The answer's body and headers; a refusal raises :class:`_Refused`."""
        if not state["ready"]:
            raise _Refused(503, "model is not ready")
        declared = content_type = binary = None
        for k, v in scope["headers"]:  # ASGI header names are lower case
            if k == b"content-length":
                declared = v
            elif k == b"content-type":
                content_type = v
            elif k == _HEADER_LENGTH:
                binary = v
        if declared and declared.isdigit() and int(declared) > opts.max_body_bytes:
            raise _Refused(400, f"body of {int(declared)} bytes is over the limit of {opts.max_body_bytes}", True)
        if declared and declared.isdigit() and int(declared) <= guard.LARGE_BODY:
            x, header = await _read_and_parse(receive, content_type, binary, False)
        elif large_count[0] >= guard.LARGE_AT_ONCE + guard.LARGE_WAITING:
            raise _Refused(503, f"{large_count[0]} large bodies are being parsed or waiting; retry later", True)
        else:
            large_count[0] += 1
            try:
                async with large:
                    x, header = await _read_and_parse(receive, content_type, binary, True)
            finally:
                large_count[0] -= 1
        try:
            y = await state["batcher"].submit(x, scope.get(guard.AHEAD, 0))
        except QueueFull as err:
            raise _Refused(503, str(err)) from None
        except Exception as err:  # noqa: BLE001 - the runtime failed on this batch
            raise _Refused(500, f"inference failed: {type(err).__name__}: {err}") from None
        content, out_headers = protocol.encode(y, header, opts.name, "output")
        return content, [(k.encode(), v.encode()) for k, v in out_headers.items()] + [
            (b"content-length", b"%d" % len(content))]

    async def _read_and_parse(receive: Callable, content_type: bytes | None, binary: bytes | None,
                              in_thread: bool) -> tuple:
        """The model inputs and JSON header of the request; a refusal raises :class:`_Refused`."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # gone (or timed out by the guard) mid-body
                raise _Refused(408, "client disconnected before its body was read")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > opts.max_body_bytes:
                raise _Refused(400, f"body is over the limit of {opts.max_body_bytes} bytes", True)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
        args = (body, (content_type or b"").decode("latin-1"),
                {protocol.HEADER_LENGTH: binary.decode("latin-1")} if binary is not None else {},
                bundle.inputs, protocol.MAX_ROWS)
        del body
        try:
            return await asyncio.to_thread(protocol.parse, *args) if in_thread else protocol.parse(*args)
        except protocol.BadRequest as err:
            raise _Refused(400, str(err)) from None

    async def unknown_infer(request: Request) -> Response:
        return _error(404, f"unknown model {request.path_params['model']!r}")

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2/models/{model}", model_meta), Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/infer", unknown_infer, methods=["POST"]), Route("/metrics", prometheus),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    infer_path = f"/v2/models/{opts.name}/infer"

    async def asgi(scope, receive, send) -> None:
        """The served model's infer route straight to its handler; everything else to Starlette.
        Its router and two error middlewares wrapped every request and every message sent, and
        caught nothing: ``infer`` answers every error itself (py-spy, benchmarks/serving.md)."""
        if scope["type"] == "http" and scope["path"] == infer_path and scope["method"] == "POST":
            await infer(scope, receive, send)
        else:
            await app(scope, receive, send)

    asgi.lifespan_context = app.router.lifespan_context  # the server's start and stop, for use in-process
    return asgi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench.serve.app", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--options", default="{}", help="JSON of Options fields")
    args = ap.parse_args(argv)
    import uvicorn


    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        opts = Options(**json.loads(args.options))
        limits = guard.Limits(**opts.limits)
        token = guard.auth_token(opts.auth_token_env)
        app = build_app(args.bundle, opts, args.host, token)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.parent_pid:
        watch_parent(args.parent_pid)
    if token:  # the bearer token, in front of every route but the health probes
        app = guard.Gate(app, auth_token=token)
    # proxy_headers off: uvicorn's middleware for X-Forwarded-* wrapped every request, and nothing
    # here reads the client's address
    config = uvicorn.Config(app, host=args.host, port=args.port, loop="uvloop", http=guard.protocol(limits),
                            log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            backlog=2048, timeout_keep_alive=limits.idle_timeout,
                            limit_concurrency=limits.limit_concurrency, proxy_headers=False)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
