"""LiteRT (the TFLite runtime, ``ai_edge_litert``) running ``.tflite`` artifacts.

The interpreter uses XNNPACK, LiteRT's default CPU delegate (``OpResolverType.AUTO`` applies
it), with ``num_threads`` = the trial's threads. That the delegate really took part is checked,
not assumed: after ``allocate_tensors`` the execution graph of a delegated model holds
``DELEGATE`` nodes (read with the interpreter's ``_get_ops_details()``, a private but long-lived
method of ``ai_edge_litert``/``tf.lite``); none means LiteRT ran its reference kernels, and the
trial is pruned with that reason. Ops XNNPACK does not take stay on the builtin kernels: their
number is reported in the session's ``options`` (``undelegated_ops``).

The input is resized to the trial's batch size (``resize_tensor_input`` + ``allocate_tensors``)
once at load, and again only when a batch of another size arrives (the last, partial batch of
the eval split), never inside the timed loop.

Callers pass their inputs as they are (float32, or integer token ids) and get float32 back: for
a fully integer model (int8/uint8 input or output tensors) the session quantizes a float batch with the input tensor's scale/zero point and
dequantizes the output, as a deployed service would have to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import TrialPruned, first_line
from workbench.core.parameter import CPU_ALIASES
from workbench.data.inputs import by_runtime_names
from workbench.runtimes import Runtime, register


def delegated_ops(interpreter) -> tuple[int, int]:
    """(delegate nodes, other nodes) in ``interpreter``'s graph after ``allocate_tensors``."""
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    delegates = sum(n == "DELEGATE" for n in names)
    return delegates, len(names) - delegates


class LitertSession:
    def __init__(self, path: Path, params, options: dict[str, Any]):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        t0 = time.perf_counter()
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=options["num_threads"],
                                       experimental_op_resolver_type=getattr(OpResolverType,
                                                                             options["op_resolver"]))
        except (ValueError, RuntimeError) as err:
            raise TrialPruned(f"litert cannot load this artifact: {first_line(err)}") from None
        self._ins = self._interp.get_input_details()
        self._names = [d["name"] for d in self._ins]
        self._out = self._interp.get_output_details()[0]
        self._batch = None
        self._resize(params.batch_size)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        delegates, others = delegated_ops(self._interp)
        if options["delegate"] == "xnnpack" and delegates == 0:
            raise TrialPruned("litert: the XNNPACK delegate was requested but took no part of this "
                              f"model (all {others} ops run on LiteRT's builtin kernels)")
        self.providers = ["litert:xnnpack"]
        self.options = {**options, "delegate_nodes": delegates, "undelegated_ops": others}

    def _resize(self, n: int) -> None:
        try:
            for d in self._ins:
                shape = list(d["shape"])
                shape[0] = n
                self._interp.resize_tensor_input(d["index"], shape, strict=False)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise TrialPruned(f"litert cannot run this model at batch size {n}: "
                              f"{first_line(err)}") from None
        self._batch = n

    @staticmethod
    def _quantize(detail: dict, batch: np.ndarray) -> np.ndarray:
        """A float batch quantized for an int8/uint8 input; integer inputs (token ids) are fed
        as they are (cast to the tensor's integer type), never quantized."""
        dtype = detail["dtype"]
        if dtype in (np.int8, np.uint8) and np.issubdtype(batch.dtype, np.floating):
            scale, zero = detail["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(batch / scale + zero), info.min, info.max).astype(dtype)
        return batch.astype(dtype, copy=False)

    def _dequantize(self, out: np.ndarray) -> np.ndarray:
        if self._out["dtype"] in (np.int8, np.uint8):
            scale, zero = self._out["quantization"]
            return ((out.astype(np.float32) - zero) * scale).astype(np.float32)
        return out.astype(np.float32, copy=False)

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        arrays = by_runtime_names(batch, self._names)
        if arrays[0].shape[0] != self._batch:
            self._resize(arrays[0].shape[0])
        for detail, x in zip(self._ins, arrays):
            self._interp.set_tensor(detail["index"], self._quantize(detail, x))
        self._interp.invoke()
        return self._dequantize(self._interp.get_tensor(self._out["index"]))

    def close(self) -> None:
        del self._interp


class LitertRuntime(Runtime):
    name = "litert"
    formats = ("tflite",)
    providers = ("xnnpack",)
    packages = ("ai-edge-litert",)

    def check_provider(self, params) -> str:
        if params.provider in CPU_ALIASES + self.providers:
            return "xnnpack"
        raise TrialPruned(f"runtime litert: provider {params.provider} is not supported "
                          "(LiteRT runs on the CPU with its XNNPACK delegate: provider xnnpack)")

    def session_options(self, params) -> dict[str, Any]:
        return {"num_threads": params.threads, "op_resolver": "AUTO",
                "delegate": self.check_provider(params)}

    def open_session(self, path: Path, params) -> LitertSession:
        return LitertSession(path, params, self.session_options(params))

    def bundle_loader(self, artifact: str) -> str:
        return f'''from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(HERE / "{artifact}"), num_threads=OPTIONS["num_threads"],
                         experimental_op_resolver_type=getattr(OpResolverType, OPTIONS["op_resolver"]))
    ins, out = interp.get_input_details(), interp.get_output_details()[0]
    names = [d["name"] for d in ins]
    state = {{"n": None}}

    def run(x):
        arrays = by_runtime_names(x, names)
        if arrays[0].shape[0] != state["n"]:
            for d in ins:
                interp.resize_tensor_input(d["index"], [arrays[0].shape[0], *d["shape"][1:]], strict=False)
            interp.allocate_tensors()
            state["n"] = arrays[0].shape[0]
        for d, a in zip(ins, arrays):
            if d["dtype"] in (np.int8, np.uint8) and np.issubdtype(a.dtype, np.floating):
                scale, zero = d["quantization"]  # a fully integer model: quantize a float input
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / scale + zero), info.min, info.max)
            interp.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32, copy=False)
    return run'''

    def doctor(self, context: dict[str, Any]) -> dict[str, Any]:
        info = super().doctor(context)
        if not info["usable"]:
            return {**info, "delegates": []}
        return {**info, "delegates": [{"name": "xnnpack", "usable": True, "why": None}]}


RUNTIME = register(LitertRuntime())
