"""``workbench doctor``: what this machine can run, and why not when it cannot.

A sweep prunes a trial whose runtime or provider is unavailable; the doctor says the same
thing up front, for every runtime and provider at once, with versions, the CPU features that
decide int8 speed (AVX2, AVX-512, VNNI, AMX) and whether there is a GPU at all. It never
fails: every probe catches its own error and reports it as the reason.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from typing import Any

from workbench import fingerprint
from workbench.cache import versions

# Why an onnxruntime provider is missing from this build, when it is.
_ORT_WHY = {
    "CUDAExecutionProvider": "needs the onnxruntime-gpu package, an NVIDIA GPU and its driver",
    "TensorrtExecutionProvider": "needs the onnxruntime-gpu package with TensorRT and an NVIDIA GPU",
    "OpenVINOExecutionProvider": "needs the onnxruntime-openvino package (the native openvino "
                                 "runtime below works without it)",
    "DmlExecutionProvider": "DirectML: Windows only (onnxruntime-directml)",
    "CoreMLExecutionProvider": "CoreML: macOS/iOS only",
    "ROCMExecutionProvider": "needs an AMD GPU build of onnxruntime (ROCm)",
    "MIGraphXExecutionProvider": "needs an AMD GPU build of onnxruntime (MIGraphX)",
    "QNNExecutionProvider": "needs onnxruntime-qnn and a Qualcomm NPU",
    "XnnpackExecutionProvider": "only in mobile/custom onnxruntime builds",
    "NnapiExecutionProvider": "Android only",
    "WebGpuExecutionProvider": "needs a WebGPU build of onnxruntime",
    "AzureExecutionProvider": "needs a build with the Azure provider",
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def gpu() -> dict[str, Any]:
    """NVIDIA GPUs as nvidia-smi and /dev see them (OpenVINO's GPU device is under runtimes)."""
    out: dict[str, Any] = {"nvidia_smi": None, "dev_nvidia": sorted(glob.glob("/dev/nvidia[0-9]*")),
                           "gpus": []}
    exe = shutil.which("nvidia-smi")
    if exe is None:
        out["nvidia_smi"] = "not installed"
    else:
        try:
            res = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if res.returncode == 0:
                out["gpus"] = [line.strip() for line in res.stdout.splitlines() if line.strip()]
                out["nvidia_smi"] = "ok"
            else:
                out["nvidia_smi"] = (res.stderr or res.stdout).strip().splitlines()[0][:200]
        except (OSError, subprocess.SubprocessError) as err:
            out["nvidia_smi"] = _first_line(err)
    out["present"] = bool(out["gpus"] or out["dev_nvidia"])
    return out


def _onnxruntime(has_gpu: bool) -> dict[str, Any]:
    from workbench.config import ORT_PROVIDERS

    info: dict[str, Any] = {"name": "onnxruntime", "version": versions("onnxruntime")["onnxruntime"]}
    try:
        import onnxruntime as ort
    except Exception as err:
        return {**info, "usable": False, "why": _first_line(err), "providers": []}
    available = ort.get_available_providers()
    providers = []
    for name in list(dict.fromkeys(available + list(ORT_PROVIDERS))):
        if name not in available:
            providers.append({"name": name, "usable": False,
                              "why": f"not in this onnxruntime build; {_ORT_WHY.get(name, 'another build has it')}"})
        elif name in _GPU_PROVIDERS and not has_gpu:
            providers.append({"name": name, "usable": False,
                              "why": "in this build, but no NVIDIA GPU was found (nvidia-smi, /dev/nvidia*)"})
        else:
            providers.append({"name": name, "usable": True, "why": None})
    return {**info, "usable": True, "why": None, "providers": providers,
            "device": ort.get_device()}


def _openvino() -> dict[str, Any]:
    info: dict[str, Any] = {"name": "openvino", "version": versions("openvino")["openvino"]}
    try:
        import openvino as ov

        core = ov.Core()
        devices = []
        for d in core.available_devices:
            try:
                full = core.get_property(d, "FULL_DEVICE_NAME")
            except Exception:
                full = ""
            devices.append({"name": d, "full_name": str(full), "usable": True, "why": None})
        for d in ("GPU", "NPU"):
            if d not in core.available_devices:
                devices.append({"name": d, "usable": False,
                                "why": f"OpenVINO lists no {d} device (no driver or no hardware)"})
    except Exception as err:
        return {**info, "usable": False, "why": _first_line(err), "devices": []}
    return {**info, "usable": True, "why": None, "devices": devices}


def _litert() -> dict[str, Any]:
    info: dict[str, Any] = {"name": "litert", "version": versions("ai-edge-litert")["ai-edge-litert"]}
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except Exception as err:
        return {**info, "usable": False, "why": _first_line(err), "delegates": []}
    return {**info, "usable": True, "why": None,
            "delegates": [{"name": "xnnpack", "usable": True, "why": None}]}


def _tensorflow(probe: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"name": "tensorflow", "version": versions("tensorflow")["tensorflow"],
                            "keras": versions("keras")["keras"]}
    if info["version"] == "absent":
        return {**info, "usable": False, "why": "tensorflow is not installed"}
    if not probe:
        return {**info, "usable": True, "why": None, "gpus": None}
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception as err:
        return {**info, "usable": False, "why": _first_line(err)}
    return {**info, "usable": True, "why": None, "gpus": gpus}


def collect(probe_tensorflow: bool = True) -> dict[str, Any]:
    """Everything the doctor reports, as a JSON-serialisable dict."""
    c = fingerprint.cpu()
    flags = set(c["flags"])
    g = gpu()
    runtimes = [_onnxruntime(g["present"]), _openvino(), _litert(), _tensorflow(probe_tensorflow)]
    ov_gpu = any(d["name"] == "GPU" and d["usable"] for d in runtimes[1].get("devices", []))
    g["openvino_gpu"] = ov_gpu
    g["present"] = g["present"] or ov_gpu
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = c["cores"]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {
            "model": c["model"], "cores": c["cores"], "usable_cores": usable_cores,
            "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
            "amx": bool(flags & {"amx_int8", "amx_bf16"}), "flags": c["flags"],
        },
        "gpu": g,
        "runtimes": runtimes,
        "versions": versions(*fingerprint.LIBRARIES),
    }


def _mark(ok: bool) -> str:
    return "ok " if ok else "-- "


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    c, g = report["cpu"], report["gpu"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    lines = [
        f"platform  {report['platform']} (Python {report['python']})",
        f"cpu       {c['model']}",
        f"          {c['cores']} cores ({c['usable_cores']} usable by this process); "
        f"AVX2 {yes(c['avx2'])}, AVX-512 {yes(c['avx512'])}, VNNI {yes(c['vnni'])}, AMX {yes(c['amx'])}",
        f"gpu       {'present' if g['present'] else 'none'}: nvidia-smi {g['nvidia_smi']}; "
        f"/dev/nvidia* {len(g['dev_nvidia'])}; openvino GPU {yes(g['openvino_gpu'])}"
        + (f"; {', '.join(g['gpus'])}" if g["gpus"] else ""),
        "",
        "runtimes (ok = usable here; -- = not, with why)",
    ]
    for rt in report["runtimes"]:
        lines.append(f"  {_mark(rt['usable'])}{rt['name']} {rt.get('version', '')}"
                     + (f": {rt['why']}" if rt.get("why") else ""))
        for item in rt.get("providers", []) + rt.get("devices", []) + rt.get("delegates", []):
            extra = f" ({item['full_name']})" if item.get("full_name") else ""
            lines.append(f"      {_mark(item['usable'])}{item['name']}{extra}"
                         + (f": {item['why']}" if item.get("why") else ""))
        if rt["name"] == "tensorflow" and rt.get("usable"):
            lines.append(f"      keras {rt.get('keras')}; GPUs seen by TensorFlow: "
                         f"{', '.join(rt['gpus']) if rt.get('gpus') else 'none'}")
    return "\n".join(lines)
