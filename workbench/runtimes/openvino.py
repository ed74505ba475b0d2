"""The native OpenVINO runtime reading the ONNX artifact."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned

_CPU_ALIASES = ("CPUExecutionProvider", "CPU", "default")


class OpenvinoSession:
    def __init__(self, path: Path, params):
        import openvino as ov

        core = ov.Core()
        device = "CPU" if params.provider in _CPU_ALIASES else params.provider
        if device not in core.available_devices:
            raise TrialPruned(f"openvino device {device} is not available "
                              f"(available: {', '.join(core.available_devices)})")
        # f32 precision hint: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs fp32 models in
        # bf16, which is a different (lossy) deployment than the one the trial asked for.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": params.threads,
                  "INFERENCE_PRECISION_HINT": "f32"}
        t0 = time.perf_counter()
        try:
            compiled = core.compile_model(str(path), device, config)
        except RuntimeError as err:  # e.g. an int8 kernel it cannot compile at this thread count
            raise TrialPruned(f"openvino cannot compile this artifact on {device}: "
                              f"{str(err).strip().splitlines()[-1]}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self._req = compiled.create_infer_request()
        self.providers = [f"openvino:{device}"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._req.infer({0: batch})
        return self._req.get_output_tensor(0).data.copy()

    def close(self) -> None:
        del self._req


def open_session(path: Path, params) -> OpenvinoSession:
    return OpenvinoSession(path, params)
