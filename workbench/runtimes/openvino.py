"""The native OpenVINO runtime reading the ONNX artifact.

Devices: CPU always; GPU and NPU when OpenVINO lists them (a requested device it does not list
prunes the trial with the reason). ``ov_hint`` is OpenVINO's performance hint: LATENCY (one
stream, all threads on one request) or THROUGHPUT (several streams for parallel requests; this
trial still runs one synchronous request, so it shows what that setting costs a single caller).
``ov_streams`` > 0 overrides the number of streams the hint would choose.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned
from workbench.inputs import by_runtime_names

_CPU_ALIASES = ("CPUExecutionProvider", "CPU", "default")
# onnxruntime provider names a user may carry over into an openvino trial
_DEVICE_ALIASES = {"CUDAExecutionProvider": "GPU", "OpenVINOExecutionProvider": "CPU"}


def device_for(provider: str) -> str:
    if provider in _CPU_ALIASES:
        return "CPU"
    return _DEVICE_ALIASES.get(provider, provider)


def compile_config(params) -> dict:
    # f32 precision hint: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs fp32 models in
    # bf16, which is a different (lossy) deployment than the one the trial asked for.
    config = {"PERFORMANCE_HINT": params.ov_hint, "INFERENCE_NUM_THREADS": params.threads,
              "INFERENCE_PRECISION_HINT": "f32"}
    if params.ov_streams:
        config["NUM_STREAMS"] = params.ov_streams
    return config


class OpenvinoSession:
    def __init__(self, path: Path, params):
        import openvino as ov

        core = ov.Core()
        device = device_for(params.provider)
        if device not in core.available_devices:
            raise TrialPruned(f"openvino device {device} is not available "
                              f"(available: {', '.join(core.available_devices)})")
        t0 = time.perf_counter()
        try:
            compiled = core.compile_model(str(path), device, compile_config(params))
        except RuntimeError as err:  # e.g. an int8 kernel it cannot compile at this thread count
            raise TrialPruned(f"openvino cannot compile this artifact on {device}: "
                              f"{str(err).strip().splitlines()[-1]}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        batch_dim = compiled.input(0).get_partial_shape()[0]
        if batch_dim.is_static and batch_dim.get_length() != params.batch_size:
            raise TrialPruned(f"the model's batch dimension is fixed to {batch_dim.get_length()} "
                              f"(asked batch_size={params.batch_size})")
        self._req = compiled.create_infer_request()
        self._inputs = [i.get_any_name() for i in compiled.inputs]
        self.providers = [f"openvino:{device}"]
        # what OpenVINO actually chose (the hint decides streams and threads unless overridden)
        self.options = {k: str(compiled.get_property(k)) for k in
                        ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")}

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        self._req.infer(dict(enumerate(by_runtime_names(batch, self._inputs))))
        return self._req.get_output_tensor(0).data.copy()

    def close(self) -> None:
        del self._req


def open_session(path: Path, params) -> OpenvinoSession:
    return OpenvinoSession(path, params)
