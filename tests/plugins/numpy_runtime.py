"""A test plug-in: a numpy-only runtime that runs an ONNX graph of MatMul/Gemm/Add/Relu/
Softmax/Reshape/Flatten nodes with weights read by onnx.numpy_helper, and a variant transform
that rounds fp32 ONNX weights. Nothing else in workbench is edited to add them."""

import time

import numpy as np

from workbench.core.errors import TrialPruned
from workbench.core.parameter import Parameter
from workbench.runtimes import Runtime, register

# Shared by the session and the exported predict.py (which embeds it).
GRAPH_CODE = '''
def make_runner(path, dtype):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t).astype(dtype) if numpy_helper.to_array(t).dtype.kind == "f"
              else numpy_helper.to_array(t) for t in graph.initializer}
    ops = {
        "MatMul": lambda a, b: a @ b,
        "Add": lambda a, b: a + b,
        "Relu": lambda a: np.maximum(a, 0),
        "Identity": lambda a: a,
        "Flatten": lambda a: a.reshape(len(a), -1),
        "Reshape": lambda a, s: a.reshape([len(a) if d == -1 and i == 0 else d for i, d in enumerate(s)]),
        "Gemm": lambda a, b, c=0: a @ b + c,
        "Softmax": lambda a: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(a - a.max(-1, keepdims=True))),
    }
    for node in graph.node:
        if node.op_type not in ops:
            raise ValueError(f"op {node.op_type} is not supported by the numpy runtime")
    name_in, name_out = graph.input[0].name, graph.output[0].name

    def run(x):
        env = {**consts, name_in: x.astype(dtype)}
        for node in graph.node:
            env[node.output[0]] = ops[node.op_type](*(env[i] for i in node.input if i))
        return env[name_out].astype(np.float32)
    return run
'''
_ns = {}
exec(GRAPH_CODE, _ns)


class NumpySession:
    def __init__(self, path, options):
        t0 = time.perf_counter()
        try:
            self._run = _ns["make_runner"](path, options["dtype"])
        except ValueError as err:
            raise TrialPruned(f"runtime numpy: {err}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = ["numpy:CPU"]

    def run(self, batch):
        return self._run(batch)

    def close(self):
        pass


class NumpyRuntime(Runtime):
    name = "numpy"
    formats = ("onnx",)
    packages = ("numpy", "onnx")
    options = (Parameter("numpy_dtype", "float32", str, choices=("float32", "float64")),)

    def session_options(self, params):
        return {"device": self.check_provider(params), "dtype": params.numpy_dtype}

    def open_session(self, path, params):
        return NumpySession(path, self.session_options(params))

    def bundle_loader(self, artifact):
        body = "\n".join("    " + line for line in GRAPH_CODE.strip().splitlines())
        return f"{body.lstrip()}\n    return make_runner(HERE / \"{artifact}\", OPTIONS[\"dtype\"])"


RUNTIME = register(NumpyRuntime())


# --- a variant transform plug-in, in the same module for the test: round fp32 ONNX weights ---

from workbench.core import cache
from workbench.variants import Artifact, Transform  # noqa: E402
from workbench.variants import register as register_transform  # noqa: E402


def _round_weights(src, dst, decimals):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(np.round(w, decimals), t.name))
    onnx.save(model, str(dst))


class RoundWeights(Transform):
    name = "round-weights"
    parameters = (Parameter("weight_decimals", 0, int, ge=0, must_apply=True,
                            help="round fp32 ONNX weights to this many decimals (0: off)"),)

    def applies(self, state, params, formats):
        return isinstance(state, Artifact) and state.format == "onnx" and params.weight_decimals > 0

    def apply(self, state, data, params, calibration_samples):
        recipe = {"decimals": params.weight_decimals}
        k = cache.key("round-weights", state.key, recipe)
        d = cache.entry("artifacts", k, lambda out: _round_weights(state.path, out / "model.onnx",
                                                                   params.weight_decimals))
        return Artifact(d / "model.onnx", "onnx", k,
                        state.transforms + (f"round-weights:{params.weight_decimals}",))


TRANSFORM = register_transform(RoundWeights())
