"""`workbench doctor`: exit code 0, readable text, parseable --json that says why when it cannot."""

import json

from conftest import run_cli

from workbench.runtimes import doctor


def test_collect_reports_runtimes_cpu_and_gpu():
    report = doctor.collect(probe_tensorflow=False)
    names = [r["name"] for r in report["runtimes"]]
    assert names == ["onnxruntime", "openvino", "litert", "tensorflow"]
    assert report["cpu"]["cores"] >= 1 and isinstance(report["cpu"]["avx2"], bool)
    ort = report["runtimes"][0]
    cpu = next(p for p in ort["providers"] if p["name"] == "CPUExecutionProvider")
    assert cpu["usable"] and ort["version"] != "absent"
    cuda = next(p for p in ort["providers"] if p["name"] == "CUDAExecutionProvider")
    if not report["gpu"]["present"]:  # this CPU machine: not usable, and why
        assert not cuda["usable"] and cuda["why"]
    for rt in report["runtimes"]:
        assert rt["usable"] or rt["why"]
    assert "AVX-512" in doctor.render(report)


def test_cli_doctor_exits_0_and_json_parses():
    # one process for both (each run imports TensorFlow to ask it for GPUs: ~5 s)
    from workbench import cli

    assert cli.main(["doctor"]) == 0
    res = run_cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    # TensorFlow's start-up lines (oneDNN, cudart, "failed call to cuInit") stay off the terminal
    assert "cuInit" not in res.stderr and "absl::InitializeLog" not in res.stderr, res.stderr
    report = json.loads(res.stdout)
    assert {"cpu", "gpu", "runtimes", "versions"} <= set(report)
    assert any(r["name"] == "litert" and r["usable"] for r in report["runtimes"])
