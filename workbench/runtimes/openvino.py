"""The native OpenVINO runtime reading the ONNX artifact.

Devices: CPU always; GPU and NPU when OpenVINO lists them (a requested device it does not list
prunes the trial with the reason). Device names are OpenVINO's own: an onnxruntime provider
name (``CUDAExecutionProvider`` is an NVIDIA GPU, not OpenVINO's Intel ``GPU``) prunes the trial
with the reason instead of being translated; only the CPU aliases mean ``CPU``.

``ov_hint`` is OpenVINO's performance hint: LATENCY (one stream, all threads on one request) or
THROUGHPUT (several streams for parallel requests; this trial still runs one synchronous
request, so it shows what that setting costs a single caller). ``ov_streams`` > 0 overrides the
number of streams the hint would choose.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import TrialPruned
from workbench.core.parameter import CPU_ALIASES, Parameter
from workbench.data.inputs import by_runtime_names
from workbench.runtimes import Runtime, register
from workbench.runtimes import why_not as first_line

DEVICES = ("CPU", "GPU", "NPU")


def device_for(provider: str) -> str:
    """OpenVINO's device for ``provider``: the CPU aliases are CPU, device names are themselves,
    anything else (an onnxruntime provider name, say) prunes the trial with the reason."""
    if provider in CPU_ALIASES:
        return "CPU"
    if provider in DEVICES:
        return provider
    raise TrialPruned(f"runtime openvino: {provider} is not an OpenVINO device (devices: "
                      f"{', '.join(DEVICES)}); onnxruntime provider names are not translated")


@functools.lru_cache(maxsize=None)
def _capabilities(device: str) -> tuple[str, ...]:
    import openvino as ov

    try:
        return tuple(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - a device OpenVINO does not list: the session says why
        return ()


def precision_hint(device: str, bits: int) -> str:
    """OpenVINO's inference precision for a trial of ``bits``. fp32: f32 (on CPUs with
    AMX/AVX512-BF16 OpenVINO would otherwise run fp32 models in bf16, a different, lossy
    deployment than the one asked for). fp16: the device's own 16-bit compute, f16 where it has
    it, else bf16 (AVX512-BF16, AMX), else f32: with an f32 hint OpenVINO upcasts the fp16 model
    and computes it in f32, and fp16 is then the same deployment as fp32 (the trial measures
    the accuracy the 16-bit compute keeps). int8 models run their int8 ops as they are."""
    if bits == 16:
        caps = _capabilities(device)
        return "f16" if "FP16" in caps else "bf16" if "BF16" in caps else "f32"
    return "f32"


def compile_config(params) -> dict:
    return RUNTIME.session_options(params)["config"]


class OpenvinoSession:
    def __init__(self, path: Path, params, options: dict[str, Any]):
        import openvino as ov

        core = ov.Core()
        device = options["device"]
        if device not in core.available_devices:
            raise TrialPruned(f"openvino device {device} is not available "
                              f"(available: {', '.join(core.available_devices)})")
        t0 = time.perf_counter()
        try:
            compiled = core.compile_model(str(path), device, options["config"])
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
                        ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")}

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        self._req.infer(dict(enumerate(by_runtime_names(batch, self._inputs))))
        return self._req.get_output_tensor(0).data.copy()

    def close(self) -> None:
        del self._req


class OpenvinoRuntime(Runtime):
    name = "openvino"
    formats = ("onnx",)
    providers = DEVICES
    packages = ("openvino",)
    options = (
        Parameter("ov_hint", "LATENCY", str, choices=("LATENCY", "THROUGHPUT"),
                  help="OpenVINO's performance hint"),
        Parameter("ov_streams", 0, int, ge=0, help="number of streams (0: the hint decides)"),
    )

    def check_provider(self, params) -> str:
        return device_for(params.provider)

    def session_options(self, params) -> dict[str, Any]:
        device = device_for(params.provider)
        config = {"PERFORMANCE_HINT": params.ov_hint, "INFERENCE_NUM_THREADS": params.threads,
                  "INFERENCE_PRECISION_HINT": precision_hint(device, params.bits)}
        if params.ov_streams:
            config["NUM_STREAMS"] = params.ov_streams
        return {"device": device, "config": config}

    def open_session(self, path: Path, params) -> OpenvinoSession:
        return OpenvinoSession(path, params, self.session_options(params))

    def bundle_loader(self, artifact: str) -> str:
        return f'''import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(HERE / "{artifact}"), OPTIONS["device"], OPTIONS["config"])
    req = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]

    def run(x):
        req.infer(dict(enumerate(by_runtime_names(x, names))))
        return req.get_output_tensor(0).data.copy()
    return run'''

    def doctor(self, context: dict[str, Any]) -> dict[str, Any]:
        info = super().doctor(context)
        if not info["usable"]:
            return {**info, "devices": []}
        try:
            import openvino as ov

            core = ov.Core()
            devices = []
            for d in core.available_devices:
                try:
                    full = core.get_property(d, "FULL_DEVICE_NAME")
                except Exception:  # noqa: BLE001
                    full = ""
                devices.append({"name": d, "full_name": str(full), "usable": True, "why": None})
            for d in DEVICES:
                if d not in core.available_devices:
                    devices.append({"name": d, "usable": False,
                                    "why": f"OpenVINO lists no {d} device (no driver or no hardware)"})
        except Exception as err:  # noqa: BLE001 - the doctor never fails
            return {**info, "usable": False, "why": first_line(err), "devices": []}
        return {**info, "devices": devices}


RUNTIME = register(OpenvinoRuntime())
