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

from workbench import runtimes
from workbench.core import fingerprint
from workbench.core.cache import versions
from workbench.core.errors import first_line


def _first_line(err: BaseException) -> str:
    line = first_line(err, 200)
    return line if line == type(err).__name__ else f"{type(err).__name__}: {line}"


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
                out["nvidia_smi"] = (first_line(res.stderr, 200) or first_line(res.stdout, 200)
                                     or f"exit code {res.returncode}")
        except (OSError, subprocess.SubprocessError) as err:
            out["nvidia_smi"] = _first_line(err)
    out["present"] = bool(out["gpus"] or out["dev_nvidia"])
    return out


def runtime_reports(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Every registered runtime's own report (``Runtime.doctor``); a probe that raises is
    reported as not usable, with its error as the reason."""
    out = []
    for rt in runtimes.registered().values():
        try:
            out.append(rt.doctor(context))
        except Exception as err:  # noqa: BLE001 - the doctor never fails
            out.append({"name": rt.name, "version": "", "usable": False, "why": _first_line(err)})
    return out


def collect(probe_tensorflow: bool = True) -> dict[str, Any]:
    """Everything the doctor reports, as a JSON-serialisable dict."""
    c = fingerprint.cpu()
    flags = set(c["flags"])
    g = gpu()
    runtimes = runtime_reports({"gpu_present": g["present"], "probe_tensorflow": probe_tensorflow})
    ov_gpu = any(r["name"] == "openvino" and d["name"] == "GPU" and d["usable"]
                 for r in runtimes for d in r.get("devices", []))
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
    registered = runtimes.registered()
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
        plugin = registered.get(rt["name"])
        lines.extend(f"      {line}" for line in (plugin.doctor_lines(rt) if plugin else []))
    return "\n".join(lines)
