"""LiteRT (the TFLite runtime, ``ai_edge_litert``) running ``.tflite`` artifacts.

The interpreter uses XNNPACK, LiteRT's default CPU delegate (``OpResolverType.AUTO`` applies
it), with ``num_threads`` = the trial's threads. The input is resized to the trial's batch size
(``resize_tensor_input`` + ``allocate_tensors``) once at load, and again only when a batch of
another size arrives (the last, partial batch of the eval split), never inside the timed loop.

Callers pass their inputs as they are (float32, or integer token ids) and get float32 back: for
a fully integer model (int8/uint8 input or output tensors) the session quantizes a float batch with the input tensor's scale/zero point and
dequantizes the output, as a deployed service would have to.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned
from workbench.inputs import by_runtime_names

_XNNPACK = ("xnnpack", "default", "CPU", "CPUExecutionProvider")


class LitertSession:
    def __init__(self, path: Path, params):
        if params.provider not in _XNNPACK:
            raise TrialPruned(f"runtime litert: provider {params.provider} is not supported "
                              "(LiteRT runs on the CPU with its XNNPACK delegate: provider xnnpack)")
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        t0 = time.perf_counter()
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=params.threads,
                                       experimental_op_resolver_type=OpResolverType.AUTO)
        except (ValueError, RuntimeError) as err:
            raise TrialPruned(f"litert cannot load this artifact: {str(err).strip().splitlines()[0]}") from None
        self._ins = self._interp.get_input_details()
        self._names = [d["name"] for d in self._ins]
        self._out = self._interp.get_output_details()[0]
        self._batch = None
        self._resize(params.batch_size)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = ["litert:xnnpack"]

    def _resize(self, n: int) -> None:
        try:
            for d in self._ins:
                shape = list(d["shape"])
                shape[0] = n
                self._interp.resize_tensor_input(d["index"], shape, strict=False)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise TrialPruned(f"litert cannot run this model at batch size {n}: "
                              f"{str(err).strip().splitlines()[0]}") from None
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


def open_session(path: Path, params) -> LitertSession:
    return LitertSession(path, params)
