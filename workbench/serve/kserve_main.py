"""The kserve engine's server: KServe's Python ModelServer with a model wrapping the bundle.

Runs in its own environment (``.venv-kserve``: kserve 0.21 pins pandas<3, protobuf<7, psutil
5.9, which the workbench's environment cannot hold) as
``.venv-kserve/bin/python -m workbench.serve.kserve_main BUNDLE --host H --http_port P
--model_name NAME``. The session is opened exactly as the builtin engine opens it
(:func:`workbench.export.bundle.open_bundle`). KServe binds to 0.0.0.0 unconditionally; here it
binds to ``--host`` (127.0.0.1 by default). KServe has no server-side batching: each request
is one ``run()``.

KServe's server has none of the builtin engine's limits and no option for them: it read a
150 MB body whole (1.8 GB of RSS), its ``/v2/repository/models/{name}/unload`` route unloaded
the model for anyone, and it cast FP64 into an FP32 model silently. So the workbench's guard is
put in front of it, in its own process: its uvicorn runs :func:`workbench.serve.guard.protocol`
(header size, read deadlines, connections, JSON 503s), its app is wrapped in
:class:`workbench.serve.guard.Gate` (the bearer token, only the routes the workbench serves,
the body size), and the model checks every decoded tensor with
:func:`workbench.serve.protocol.model_inputs` (datatype and shape exactly the model's: 400).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid

from workbench.core.errors import WorkbenchError
from workbench.export.bundle import open_bundle
from workbench.serve import guard, protocol, watch_parent

MAX_BODY_BYTES = 16 * 2**20  # as the builtin engine's


def routes(name: str) -> re.Pattern:
    """The paths the workbench serves (as the builtin engine); KServe's others are off: its model
    repository (``/v2/repository/...``: load, unload), v1, OpenAI and docs routes."""
    model = re.escape(name)
    return re.compile(rf"/v2(/health/(live|ready)|/models/{model}(/ready|/infer)?)?|/metrics")


def _guard_patch(host: str, name: str, token: str | None, limits: guard.Limits) -> None:
    """Configure KServe's REST server as the workbench's own: bound to ``host`` instead of its
    hard-coded 0.0.0.0, the guard's uvicorn protocol and limits, its app behind :class:`guard.Gate`,
    a request it cannot decode or validate a 400 with one line (its own: 500, or 422 with a list)."""
    from fastapi.exceptions import RequestValidationError
    from kserve.errors import InvalidInput
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest import server as rest
    from starlette.exceptions import HTTPException

    original = rest.RESTServer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        c = self.config
        c.host, c.http, c.limit_concurrency = host, guard.protocol(limits), limits.limit_concurrency
        c.timeout_keep_alive, c.timeout_graceful_shutdown = limits.idle_timeout, 5
        c.app = guard.Gate(app, auth_token=token, routes=routes(name), max_body_bytes=MAX_BODY_BYTES)

    rest.RESTServer.__init__ = init

    def decode(self, *a, **kw):  # KServe's binary-data decoding raises ValueError on a short body: a 500
        try:
            return decoded(self, *a, **kw)
        except (ValueError, TypeError) as err:
            raise InvalidInput(f"body: {str(err).splitlines()[0][:200]}") from None

    decoded, DataPlane.decode = DataPlane.decode, decode
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)


async def _http_error(request, exc):
    """FastAPI's own refusals (``{"detail": ...}``: a body it cannot parse, a wrong method) in the
    workbench's one-line form."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": str(exc.detail).splitlines()[0][:300] if exc.detail else "error"},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _invalid_request(request, exc):
    """FastAPI's 422 with a list of pydantic errors, as the builtin engine's 400 with one line."""
    from fastapi.responses import JSONResponse

    first = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "InferenceRequest"))
    return JSONResponse({"error": f"{where or 'body'}: {first.get('msg', 'invalid request')}"[:300]},
                        status_code=400)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model_name", default="model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--trust-model-code", action="store_true")
    ap.add_argument("--auth-token-env")
    ap.add_argument("--limits", default="{}", help="JSON of guard.Limits fields")
    args, rest_args = ap.parse_known_args()
    try:
        token = guard.auth_token(args.auth_token_env)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    # kserve parses sys.argv when imported: hand it only its own flags
    sys.argv = [sys.argv[0], *rest_args]
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.errors import InvalidInput


    class BundleModel(Model):
        def __init__(self, name: str):
            super().__init__(name)
            self.session = None

        def load(self) -> bool:
            self.bundle = open_bundle(args.bundle, args.trust_model_code)
            self.session = self.bundle.session(args.threads)
            self.ready = True
            return True

        def get_input_types(self) -> list[dict]:
            return [{"name": n or "input", "datatype": protocol.datatype_of(np.dtype(d)), "shape": [-1, *s]}
                    for n, s, d in self.bundle.inputs]

        def get_output_types(self) -> list[dict]:
            return [{"name": "output", "datatype": "FP32", "shape": [-1]}]

        def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            specs = self.bundle.inputs
            if len(payload.inputs) != len(specs):
                raise InvalidInput(f"{len(payload.inputs)} input tensors given; the model has {len(specs)}")
            try:
                got = {}
                for n, i in enumerate(payload.inputs):
                    if "binary_data_size" in (i.parameters or {}):  # raw bytes of the declared datatype
                        name, x = i.name, i.as_numpy()
                    else:  # KServe's as_numpy() would cast "0.5" or true into FP32: checked as ours
                        name, x = protocol.json_tensor({"name": i.name, "shape": i.shape, "datatype": i.datatype,
                                                        "data": i.data}, n, MAX_BODY_BYTES)
                    got[name if len(specs) > 1 else None] = x
                x = protocol.model_inputs(got, specs, protocol.MAX_ROWS)
            except protocol.BadRequest as err:
                raise InvalidInput(str(err)) from None
            except (ValueError, TypeError) as err:  # KServe's binary decoding: bytes that do not fill the shape
                raise InvalidInput(f"input: {str(err).splitlines()[0][:200]}") from None
            y = np.asarray(self.session.run(x))
            out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y.astype(np.float32), binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or uuid.uuid4().hex)

    _guard_patch(args.host, args.model_name, token, guard.Limits(**json.loads(args.limits)))
    if args.parent_pid:

        watch_parent(args.parent_pid)
    model = BundleModel(args.model_name)
    model.load()
    ModelServer(enable_grpc=False, enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
