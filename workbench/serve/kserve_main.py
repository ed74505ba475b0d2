"""The kserve engine's server: KServe's Python ModelServer with a model wrapping the bundle.

Runs in its own environment (``.venv-kserve``: kserve 0.21 pins pandas<3, protobuf<7, psutil
5.9, which the workbench's environment cannot hold) as
``.venv-kserve/bin/python -m workbench.serve.kserve_main BUNDLE --host H --http_port P
--model_name NAME``. The session is opened exactly as the builtin engine opens it
(:func:`workbench.export.bundle.open_bundle`). KServe binds to 0.0.0.0 unconditionally; here it
binds to ``--host`` (127.0.0.1 by default). KServe has no server-side batching: each request
is one ``run()``.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from workbench.export.bundle import open_bundle
from workbench.serve import watch_parent
from workbench.serve.protocol import datatype_of


def _host_patch(host: str) -> None:
    """Make KServe's REST server bind to ``host`` instead of its hard-coded 0.0.0.0."""
    from kserve.protocol.rest import server as rest

    original = rest.RESTServer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        self.config.host = host

    rest.RESTServer.__init__ = init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model_name", default="model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--trust-model-code", action="store_true")
    args, rest_args = ap.parse_known_args()
    # kserve parses sys.argv when imported: hand it only its own flags
    sys.argv = [sys.argv[0], *rest_args]
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


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
            return [{"name": n or "input", "datatype": datatype_of(np.dtype(d)), "shape": [-1, *s]}
                    for n, s, d in self.bundle.inputs]

        def get_output_types(self) -> list[dict]:
            return [{"name": "output", "datatype": "FP32", "shape": [-1]}]

        def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            specs = self.bundle.inputs
            if len(specs) == 1:
                x = np.ascontiguousarray(payload.inputs[0].as_numpy(), dtype=specs[0][2])
            else:
                got = {i.name: i.as_numpy() for i in payload.inputs}
                x = {n: np.ascontiguousarray(got[n], dtype=d) for n, _, d in specs}
            y = np.asarray(self.session.run(x))
            out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y.astype(np.float32), binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or uuid.uuid4().hex)

    _host_patch(args.host)
    if args.parent_pid:

        watch_parent(args.parent_pid)
    model = BundleModel(args.model_name)
    model.load()
    ModelServer(enable_grpc=False, enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
