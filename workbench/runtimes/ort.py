"""onnxruntime sessions with explicit threads, optimization level, execution mode and provider checks.

Every provider of ``onnxruntime.get_available_providers()`` can be requested. After the session
is created the *active* providers are read back: onnxruntime silently falls back to the CPU when
a provider fails to initialise (no CUDA driver, for example), and a trial that asked for CUDA
and measured the CPU would be a lie, so that trial is pruned with the reason instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import TrialPruned, first_line
from workbench.core.parameter import CPU_ALIASES, Parameter
from workbench.data.inputs import by_runtime_names
from workbench.runtimes import Runtime, register

GRAPH_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
                      "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
EXECUTION_MODE = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
# Every execution provider name onnxruntime knows, and why a build may lack it. Unknown names
# are config errors; known ones that the installed build lacks are pruned trials with the reason.
PROVIDERS_WHY = {
    "CPUExecutionProvider": "always in onnxruntime",
    "CUDAExecutionProvider": "needs the onnxruntime-gpu package, an NVIDIA GPU and its driver",
    "TensorrtExecutionProvider": "needs the onnxruntime-gpu package with TensorRT and an NVIDIA GPU",
    "OpenVINOExecutionProvider": "needs the onnxruntime-openvino package (the native openvino "
                                 "runtime works without it)",
    "DmlExecutionProvider": "DirectML: Windows only (onnxruntime-directml)",
    "CoreMLExecutionProvider": "CoreML: macOS/iOS only",
    "ROCMExecutionProvider": "needs an AMD GPU build of onnxruntime (ROCm)",
    "MIGraphXExecutionProvider": "needs an AMD GPU build of onnxruntime (MIGraphX)",
    "QNNExecutionProvider": "needs onnxruntime-qnn and a Qualcomm NPU",
    "XnnpackExecutionProvider": "only in mobile/custom onnxruntime builds",
    "NnapiExecutionProvider": "Android only",
    "AzureExecutionProvider": "needs a build with the Azure provider",
    "WebGpuExecutionProvider": "needs a WebGPU build of onnxruntime",
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def session_options(params):
    """SessionOptions from the trial's threads, inter-op threads, optimization level and mode."""
    return make_session_options(RUNTIME.session_options(params))


def make_session_options(options: dict[str, Any]):
    """An ``ort.SessionOptions`` from :meth:`OnnxRuntime.session_options` (predict.py does the same)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = options["intra_op_num_threads"]
    opts.inter_op_num_threads = options["inter_op_num_threads"]
    opts.execution_mode = getattr(ort.ExecutionMode, options["execution_mode"])
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, options["graph_optimization_level"])
    opts.log_severity_level = 3
    return opts


class OrtSession:
    def __init__(self, path: Path, params, options: dict[str, Any]):
        import onnxruntime as ort

        provider = options["providers"][0]
        available = ort.get_available_providers()
        if provider not in available:
            raise TrialPruned(f"provider {provider} is not available in this onnxruntime "
                              f"build (available: {', '.join(available)})")
        t0 = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=make_session_options(options),
                                              providers=[provider])
        except Exception as err:  # e.g. the CUDA provider library present but no driver
            line = first_line(err, 200)
            raise TrialPruned(f"provider {provider} could not create a session ({line})") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = self._sess.get_providers()
        if provider not in self.providers:
            raise TrialPruned(f"provider {provider} was requested but onnxruntime activated "
                              f"only {', '.join(self.providers)}")
        inp = self._sess.get_inputs()[0]
        fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
        if fixed is not None and fixed != params.batch_size:
            raise TrialPruned(f"the model's batch dimension is fixed to {fixed} "
                              f"(asked batch_size={params.batch_size})")
        self._inputs = [i.name for i in self._sess.get_inputs()]
        self._outputs = [self._sess.get_outputs()[0].name]

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        return self._sess.run(self._outputs, dict(zip(self._inputs, by_runtime_names(batch, self._inputs))))[0]

    def close(self) -> None:
        del self._sess


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnx",)
    providers = tuple(PROVIDERS_WHY)
    packages = ("onnxruntime",)
    options = (
        Parameter("inter_op_threads", 1, int, ge=1, help="threads across independent nodes"),
        Parameter("graph_optimization", "all", str, choices=tuple(GRAPH_OPTIMIZATION)),
        Parameter("execution_mode", "sequential", str, choices=tuple(EXECUTION_MODE)),
    )

    def check_provider(self, params) -> str:
        if params.provider in CPU_ALIASES:
            return "CPUExecutionProvider"
        if params.provider not in self.providers:
            raise TrialPruned(f"runtime onnxruntime: {params.provider} is not an onnxruntime "
                              "execution provider (e.g. CPUExecutionProvider, CUDAExecutionProvider)")
        return params.provider

    def session_options(self, params) -> dict[str, Any]:
        return {"intra_op_num_threads": params.threads, "inter_op_num_threads": params.inter_op_threads,
                "execution_mode": EXECUTION_MODE[params.execution_mode],
                "graph_optimization_level": GRAPH_OPTIMIZATION[params.graph_optimization],
                "providers": [self.check_provider(params)]}

    def open_session(self, path: Path, params) -> OrtSession:
        return OrtSession(path, params, self.session_options(params))

    def bundle_loader(self, artifact: str) -> str:
        return f'''import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = OPTIONS["intra_op_num_threads"]
    opts.inter_op_num_threads = OPTIONS["inter_op_num_threads"]
    opts.execution_mode = getattr(ort.ExecutionMode, OPTIONS["execution_mode"])
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIONS["graph_optimization_level"])
    sess = ort.InferenceSession(str(HERE / "{artifact}"), sess_options=opts, providers=OPTIONS["providers"])
    if sess.get_providers()[0] != OPTIONS["providers"][0]:
        raise SystemExit(f"onnxruntime activated {{sess.get_providers()}}, not {{OPTIONS['providers']}}")
    names = [i.name for i in sess.get_inputs()]
    output = sess.get_outputs()[0].name
    return lambda x: sess.run([output], dict(zip(names, by_runtime_names(x, names))))[0]'''

    def doctor(self, context: dict[str, Any]) -> dict[str, Any]:
        info = super().doctor(context)
        if not info["usable"]:
            return {**info, "providers": []}
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = []
        for name in list(dict.fromkeys(available + list(self.providers))):
            if name not in available:
                providers.append({"name": name, "usable": False,
                                  "why": f"not in this onnxruntime build; {PROVIDERS_WHY.get(name, 'another build has it')}"})
            elif name in _GPU_PROVIDERS and not context.get("gpu_present"):
                providers.append({"name": name, "usable": False,
                                  "why": "in this build, but no NVIDIA GPU was found (nvidia-smi, /dev/nvidia*)"})
            else:
                providers.append({"name": name, "usable": True, "why": None})
        return {**info, "providers": providers, "device": ort.get_device()}


RUNTIME = register(OnnxRuntime())
