"""What a number was measured on: host, CPU, cores, library versions.

Latency is only comparable between trials with the same fingerprint ``hardware_id``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from functools import lru_cache

from workbench.core.cache import versions

LIBRARIES = ("workbench", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino",
             "ai-edge-litert", "optuna", "papermill", "numpy")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "neon", "asimd")


@lru_cache(maxsize=1)
def cpu() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def collect() -> dict:
    """The fingerprint of this process's machine."""
    c = cpu()
    hw = f"{c['model']}|{c['cores']}|{platform.machine()}"
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": c,
        "hardware_id": hashlib.sha256(hw.encode()).hexdigest()[:12],
        "versions": versions(*LIBRARIES),
    }
