"""Serving under load: QPS at a p99 SLO per engine, what dynamic batching buys, server vs
in-process latency, and how long one server trial takes.

Writes benchmarks/serving.md (+ serving.json). Run with `.venv/bin/python benchmarks/serving.py`
(~10 min on 2 cores); `--render` rewrites the page from serving.json without measuring;
`--slo-ms=50` sets the SLO (default 10 ms; a shared, busy machine may not reach 10 ms at all,
the page records the load average before and after).

* ``max_qps_at_slo`` from :func:`workbench.serve.trial.run_server_trial` (open-loop Poisson
  load, ramp + bisection, converging windows) on digits_cnn and cnn32 (onnxruntime fp32, one
  thread), per engine (builtin; kserve when ``.venv-kserve`` exists), at a 10 ms p99 SLO;
* builtin with dynamic batching (max 8, 2 ms, policy delay; and policy idle) vs
  ``max_batch_size: 1``, at the same SLO;
* server p50 at a low rate (20 QPS, policy idle) vs the in-process p50 of the same session;
* the load generator vs ``mlcommons-loadgen``'s Server scenario: only when ``mlperf_loadgen``
  imports (it is not a dependency); otherwise the page says so;
* gRPC beside REST (:func:`grpc_side_by_side`, its own section and ``serving_grpc.json``;
  ``--grpc`` measures only it): one builtin server with ``--grpc-port``, closed-loop clients at
  c=1 and c=8, REST and gRPC alternated in rounds, in one run.
* REST side by side with the hand-written floor (``benchmarks/floor_server.py``), wrk as the
  client: the builtin engine at batch 1 (with and without guard.py's limits), dynamic batching
  on digits_cnn and on cnn32, and `workbench load` against wrk (:func:`rest_floor`; ``--rest``
  runs this part alone, about 6 min; ``--rounds=N``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from workbench.core import fingerprint

MODELS = {"digits_cnn": "digits", "cnn32": "digits32"}
SLO_MS = float(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--slo-ms=")), 10.0))
WINDOWS = dict(min_seconds=0.5, max_seconds=4.0)
CONFIGS = {
    "builtin batch<=8 delay 2ms": dict(serving_engine="builtin", max_batch_size=8, max_queue_delay_ms=2.0,
                                       batch_policy="delay"),
    "builtin batch<=8 idle": dict(serving_engine="builtin", max_batch_size=8, batch_policy="idle"),
    "builtin batch 1": dict(serving_engine="builtin", max_batch_size=1, batch_policy="idle"),
    "kserve (no batching)": dict(serving_engine="kserve", max_batch_size=1),
}


def server_trials() -> list[dict]:
    from workbench.serve import kserve
    from workbench.trial.server import run_server_trial

    rows = []
    for model, data in MODELS.items():
        for label, cfg in CONFIGS.items():
            if cfg["serving_engine"] == "kserve" and not kserve.available():
                rows.append({"model": model, "config": label, "skipped": kserve.unavailable_reason()})
                continue
            params = {"model": model, "data": data, "slo_ms": SLO_MS, **WINDOWS, **cfg}
            m = run_server_trial(params, out_dir=HERE / "serving-runs" / f"{model}-{label.replace(' ', '_')}",
                                 log=lambda s: print(f"{model} {label}: {s.strip()}", flush=True))
            rows.append({"model": model, "config": label, **{k: m.get(k) for k in (
                "max_qps_at_slo", "latency_p50_ms", "latency_p99_ms", "mean_batch_size", "server_cpu_pct",
                "peak_rss_mb", "rejected_requests", "accuracy_under_load_matches_offline", "total_seconds")},
                "load_valid": m.get("load_valid"), "points": len(m.get("points", []))})
    return rows


def low_rate() -> list[dict]:
    """Server p50 at 20 QPS (policy idle: no batching wait) vs in-process p50, same session."""
    import numpy as np

    from workbench.config.params import TrialParams
    from workbench.export.bundle import open_bundle, write_bundle
    from workbench.measure import timing
    from workbench.serve import ServeOptions, engine, free_port, load
    from workbench.variants import artifact_for

    rows = []
    for model, data in MODELS.items():
        p = TrialParams.parse({"model": model, "data": data})
        d, _, art = artifact_for(p)
        bundle = write_bundle(HERE / "serving-runs" / f"bundle-{model}", p, art, d)
        session = open_bundle(bundle).session()
        x = np.ascontiguousarray(d.x_eval[:1])
        times = timing.time_calls(lambda: session.run(x), 50, 500, 2.0, 5.0)
        session.close()
        eng = engine("builtin", bundle, ServeOptions(port=free_port(), batch_policy="idle", max_batch_size=8))
        eng.start()
        try:
            eng.wait_ready(120)
            items = load.payloads(d.x_eval, d.y_eval)
            load.run(eng.infer_url, rate=20, duration=2, items=items)  # warm-up
            r = load.run(eng.infer_url, rate=20, duration=15, items=items)
            rb = load.run(eng.infer_url, rate=20, duration=15, items=load.payloads(d.x_eval, d.y_eval, binary=True))
        finally:
            eng.stop()
        rows.append({"model": model, "in_process_p50_ms": float(np.percentile(times, 50)) / 1e6,
                     "server_p50_ms": r["p50_ms"], "server_p99_ms": r["p99_ms"], "server_npy_p50_ms": rb["p50_ms"],
                     "late_fraction": r["late_fraction"], "valid": r["valid"]})
    return rows


def loadgen_comparison(rate: float = 200.0, seconds: float = 10.0, repeats: int = 2) -> dict:
    """Same server (digits_cnn, builtin, policy idle), same rate: LoadGen's Server scenario
    (benchmarks/serving_loadgen.py, in an environment that has mlcommons-loadgen) and ours,
    alternated ``repeats`` times."""
    import subprocess

    import numpy as np

    from workbench.config.params import TrialParams
    from workbench.export.bundle import write_bundle
    from workbench.serve import ServeOptions, engine, free_port, load, protocol
    from workbench.variants import artifact_for

    py = os.environ.get("WORKBENCH_LOADGEN_PYTHON") or str(HERE.parent / ".venv-kserve" / "bin" / "python")
    probe = subprocess.run([py, "-c", "import mlperf_loadgen"], capture_output=True) if Path(py).exists() else None
    if probe is None or probe.returncode != 0:
        return {"skipped": f"mlcommons-loadgen does not import in {py} (`{py} -m pip install mlcommons-loadgen`)"}
    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    d, _, art = artifact_for(p)
    bundle = write_bundle(HERE / "serving-runs" / "bundle-loadgen", p, art, d)
    x = np.ascontiguousarray(d.x_eval[:1])
    body = HERE / "serving-runs" / "loadgen-body.json"
    body.write_bytes(protocol.request_json(x))
    items = [load.Payload(body.read_bytes(), "application/json", -1)]
    eng = engine("builtin", bundle, ServeOptions(port=free_port(), batch_policy="idle", max_batch_size=8))
    eng.start()
    rows = []
    try:
        eng.wait_ready(120)
        load.run(eng.infer_url, rate=rate, duration=2, items=items)  # warm-up
        for _ in range(repeats):
            out = subprocess.run([py, str(HERE / "serving_loadgen.py"), eng.infer_url, str(body), str(rate),
                                  str(seconds)], capture_output=True, text=True, timeout=seconds * 6 + 60)
            lg = json.loads(out.stdout.strip().splitlines()[-1])
            ours = load.run(eng.infer_url, rate=rate, duration=seconds, items=items)
            rows.append({"loadgen": lg, "ours": {k: ours[k] for k in ("achieved_qps", "p50_ms", "p90_ms", "p99_ms",
                                                                       "late_fraction", "client_cpu", "valid")}})
    finally:
        eng.stop()
    return {"rate": rate, "seconds": seconds, "rows": rows}


# --- REST side by side with the hand-written floor (issue 20, item 1) ---------------------------
# wrk (closed loop, one thread) posts one V2 JSON sample to every server in turn, the order
# alternating between rounds; all servers run the whole time, each in its own process on loopback.

FLOOR_ROUNDS = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--rounds=")), 3))
FLOOR_SECONDS = 5.0
WRK_LUA = """local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK {{\\"requests\\": %d, \\"us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"errors\\": %d, \\"non2xx\\": %d}}\\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""
# (server, model, wrk connections): the comparisons the issue asks for
REST_RUNS = [("floor", "digits_cnn", 1), ("builtin batch 1", "digits_cnn", 1),
             ("builtin batch 1, no guard", "digits_cnn", 1), ("builtin batch<=8 idle", "digits_cnn", 1),
             ("floor", "digits_cnn", 8), ("builtin batch 1", "digits_cnn", 8),
             ("builtin batch 1, no guard", "digits_cnn", 8), ("builtin batch<=8 idle", "digits_cnn", 8),
             ("kserve", "digits_cnn", 1), ("kserve", "digits_cnn", 8),
             ("container batch 1", "digits_cnn", 1), ("container batch 1", "digits_cnn", 8),
             ("builtin batch 1", "cnn32", 16), ("builtin batch<=16 idle", "cnn32", 16),
             ("floor", "cnn32_head", 16), ("builtin batch 1", "cnn32_head", 16),
             ("builtin batch<=8 idle", "cnn32_head", 16), ("builtin batch<=16 idle", "cnn32_head", 16)]
REST_MODELS = {"digits_cnn": "digits", "cnn32": "digits32", "cnn32_head": "digits32"}
REST_SERVERS = {"floor": None, "builtin batch 1": dict(max_batch_size=1, batch_policy="idle"),
                "builtin batch 1, no guard": dict(max_batch_size=1, batch_policy="idle"),
                "builtin batch<=8 idle": dict(max_batch_size=8, batch_policy="idle"),
                "builtin batch<=16 idle": dict(max_batch_size=16, batch_policy="idle"),
                "kserve": "kserve",  # the kserve engine (no batching), where .venv-kserve exists
                # `workbench image` of the bundle under podman (host network), where podman can run
                "container batch 1": ["--max-batch-size", "1", "--batch-policy", "idle"]}


def cnn32_head(path: Path, hidden: int = 512, seed: int = 0) -> Path:
    """A 32x32x3 CNN whose cost is its dense head (one 3x3 convolution, 16 channels, then
    16,384 x ``hidden`` and ``hidden`` x 10), random weights, written as ONNX: a few ms per image
    at batch 1, where reading the 33 MB of weights dominates - the kind of model batching pays for
    (a batch reads them once). cnn32's six convolutions gain little per image from a batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    flat = 32 * 32 * 16
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Reshape", ["r", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "fc1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "fc2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["output"], axis=-1)]
    graph = helper.make_graph(
        nodes, "cnn32_head", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 32, 32, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 10])],
        [weight("conv", 16, 3, 3, 3, fan_in=27), weight("fc1", flat, hidden, fan_in=flat),
         weight("fc2", hidden, 10, fan_in=hidden), numpy_helper.from_array(np.array([-1, flat], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def serve_unguarded(bundle: str, port: str, options: str) -> None:
    """The builtin app on uvicorn's plain httptools protocol, without workbench/serve/guard.py's
    limits: only to measure what the limits cost (``serving.py --serve-unguarded B PORT JSON``)."""
    import uvicorn

    from workbench.serve.app import Options, build_app

    uvicorn.run(build_app(bundle, Options(**json.loads(options))), host="127.0.0.1", port=int(port),
                loop="uvloop", http="httptools", log_level="warning", access_log=False)


def _wrk(url: str, lua: Path, connections: int, seconds: float, server_pid: int | None = None) -> dict:
    """wrk's throughput and percentiles, and the server's CPU time per answered request (less
    noisy than throughput on a shared machine: other processes take turns, not CPU seconds)."""
    import subprocess

    import psutil

    def cpu() -> float:  # the server and its children (`workbench serve` in a container starts one)
        if not server_pid:
            return 0.0
        top = psutil.Process(server_pid)
        return sum(sum(p.cpu_times()[:2]) for p in [top, *top.children(recursive=True)])

    cpu0 = cpu()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(lua), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    used = cpu() - cpu0
    r = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
    return {"req_s": r["requests"] / (r["us"] / 1e6), "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "server_cpu_us": used / max(r["requests"], 1) * 1e6, "errors": r["errors"] + r["non2xx"],
            "loadavg": os.getloadavg()[0]}


def _started(cmd: list[str], url: str, log: Path):
    """A server process of its own session (so its whole group is stopped), ready within 120 s."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                p for p in [str(HERE.parent), os.environ.get("PYTHONPATH", "")] if p)})
    if _ready(url, alive=lambda: proc.poll() is None):
        return proc
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{cmd} did not come up; see {log}")


def _ready(url: str, seconds: float = 120, alive=lambda: True) -> bool:
    """Whether ``url`` answers 200 within ``seconds`` (while ``alive()``)."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def rest_floor() -> dict:
    """Each of REST_RUNS for FLOOR_SECONDS per round, FLOOR_ROUNDS rounds, order alternating;
    then `workbench load` at 50 QPS against wrk at c=1 on the builtin batch 1 server."""
    import contextlib
    import signal

    import numpy as np

    from workbench.config.params import TrialParams
    from workbench.export import image
    from workbench.export.bundle import write_bundle
    from workbench.serve import ServeOptions, free_port, kserve, load, protocol
    from workbench.variants import artifact_for

    runs_dir = HERE / "serving-runs" / "floor"
    runs_dir.mkdir(parents=True, exist_ok=True)
    bundles, lua = {}, {}
    for model, data in REST_MODELS.items():
        spec = str(cnn32_head(runs_dir / "cnn32_head.onnx")) if model == "cnn32_head" else model
        p = TrialParams.parse({"model": spec, "data": data})
        d, _, art = artifact_for(p)
        # metrics given: the whole bundle, with the requirements.txt that `workbench image` needs
        bundles[model] = write_bundle(runs_dir / f"bundle-{model}", p, art, d, metrics={})
        body = runs_dir / f"body-{model}.json"
        body.write_bytes(protocol.request_json(np.ascontiguousarray(d.x_eval[:1])))
        lua[model] = runs_dir / f"post-{model}.lua"
        lua[model].write_text(WRK_LUA.format(body=body))
    podman_reason = image.missing_tool("podman", "runc", "mmdebstrap")
    runs = [r for r in REST_RUNS if (r[0] != "kserve" or kserve.available())
            and (not r[0].startswith("container") or podman_reason is None)]
    wanted = sorted({(server, model) for server, model, _ in runs})
    urls, pids, procs, containers, built = {}, {}, [], [], {}
    try:
        for server, model in wanted:
            port, opts = free_port(), REST_SERVERS[server]
            if opts is None:
                cmd = [sys.executable, str(HERE / "floor_server.py"), str(bundles[model] / "model.onnx"), str(port)]
            elif opts == "kserve":
                cmd = kserve.KServeEngine(bundles[model], ServeOptions(port=port, name="model")).command()
            elif "no guard" in server:
                cmd = [sys.executable, str(HERE / "serving.py"), "--serve-unguarded", str(bundles[model]),
                       str(port), json.dumps(opts)]
            else:
                cmd = [sys.executable, "-m", "workbench.serve.app", str(bundles[model]), "--port", str(port),
                       "--options", json.dumps(opts)]
            base = f"http://127.0.0.1:{port}"
            if server.startswith("container"):
                tag = f"localhost/workbench-bench:floor-{model}"
                built[tag] = image.build(bundles[model], tag)
                cid = image.podman("run", "-d", "--network=host", "-e", "HOST=127.0.0.1", "-e", f"PORT={port}",
                                   tag, *opts).stdout.strip()
                containers.append(cid)
                if not _ready(base + "/v2/health/ready"):
                    raise RuntimeError(f"container of {tag} did not come up: "
                                       + image.podman("logs", cid, check=False).stderr[-500:])
                pid = int(image.podman("inspect", "-f", "{{.State.Pid}}", cid).stdout)
            else:
                procs.append(_started(cmd, base + "/v2/health/ready",
                                      runs_dir / f"{server}-{model}.log".replace(" ", "_")))
                pid = procs[-1].pid
            urls[server, model], pids[server, model] = base + "/v2/models/model/infer", pid
        for (server, model), url in urls.items():  # warm-up
            _wrk(url, lua[model], 8, 1.0)
        rows = []
        for r in range(FLOOR_ROUNDS):
            order = runs if r % 2 == 0 else runs[::-1]
            for server, model, c in order:
                m = _wrk(urls[server, model], lua[model], c, FLOOR_SECONDS, pids[server, model])
                rows.append({"round": r + 1, "server": server, "model": model, "connections": c, **m})
                print(rows[-1], flush=True)
        cross = []
        url, items = urls["builtin batch 1", "digits_cnn"], [load.Payload(
            (runs_dir / "body-digits_cnn.json").read_bytes(), "application/json", -1)]
        for r in range(FLOOR_ROUNDS):
            w = _wrk(url, lua["digits_cnn"], 1, FLOOR_SECONDS)
            o = load.run(url, rate=50, duration=FLOOR_SECONDS * 2, items=items)
            cross.append({"round": r + 1, "wrk_p50_ms": w["p50_ms"], "load_p50_ms": o["p50_ms"],
                          "load_p99_ms": o["p99_ms"], "late_fraction": o["late_fraction"],
                          "valid": o["valid"], "loadavg": os.getloadavg()[0]})
            print(cross[-1], flush=True)
    finally:
        for cid in containers:
            image.podman("rm", "-f", "-t", "5", cid, check=False)
        for tag in built:
            image.podman("rmi", "-f", tag, check=False)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001 - still there after 30 s: no process left behind
                os.killpg(proc.pid, signal.SIGKILL)
    return {"rows": rows, "cross_check": cross, "seconds_per_run": FLOOR_SECONDS, "rounds": FLOOR_ROUNDS,
            "images": {tag: {k: b.get(k) for k in ("size_bytes", "seconds")} for tag, b in built.items()},
            "skipped": {"container": podman_reason} if podman_reason else {}}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else float("nan")


def render_rest_floor(res: dict) -> str:
    """The page's section for :func:`rest_floor`: medians over rounds, and per-round ratios
    against the floor (or the batch 1 server) of the same round."""
    rf, rows = res["rest_floor"], res["rest_floor"]["rows"]

    def of(server, model, c, key):
        return {r["round"]: r[key] for r in rows if (r["server"], r["model"], r["connections"]) == (server, model, c)}

    def ratio(server, model, c, ref):
        a, b = of(server, model, c, "req_s"), of(ref, model, c, "req_s")
        per_round = [a[k] / b[k] for k in a if k in b and b[k]]
        return _median(per_round), min(per_round, default=float("nan")), max(per_round, default=float("nan"))

    la = [r["loadavg"] for r in rows]
    out = [f"## REST side by side with the hand-written floor ({rf['date']}, issue 20)", "",
           "`benchmarks/floor_server.py` is the floor: Starlette + uvicorn (uvloop, httptools) + one onnxruntime "
           "session, V2 JSON, no batching, no validation, no metrics. Every server below ran at the same time, each "
           "in its own process on 127.0.0.1, with the bundle's session options (onnxruntime fp32, one thread). The "
           f"client is wrk (closed loop, 1 thread) posting one V2 JSON sample, {rf['seconds_per_run']:g} s per run, "
           f"{rf['rounds']} rounds, the order reversed every other round. **All figures of this section were "
           f"measured together, in one run**, on 2 cores shared by wrk and the servers: load average (1 min) "
           f"during the runs {min(la):.1f} - {max(la):.1f}, before "
           f"{_load(rf, 'loadavg_before')}, after {_load(rf, 'loadavg_after')}. Absolute figures move with that "
           "load from run to run; the ratios are per round (the same minute), median and range over rounds. "
           "`server CPU us/req` is the server process's CPU time (user + system) over answered requests: the "
           "least noisy figure here, since other processes take turns on the cores, not the server's CPU "
           "seconds.", "",
           "| model | c | server | req/s (median) | p50 ms | p99 ms | server CPU us/req | errors | ratio (median, min - max) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    seen = []
    for r in rows:
        key = (r["server"], r["model"], r["connections"])
        if key in seen:
            continue
        seen.append(key)
        server, model, c = key
        ref = "floor" if model == "digits_cnn" or server == "builtin batch 1" else "builtin batch 1"
        med, lo, hi = ratio(server, model, c, ref) if server != "floor" else (float("nan"),) * 3
        q = {k: _median(list(of(server, model, c, k).values())) for k in ("req_s", "p50_ms", "p99_ms", "server_cpu_us")}
        err = sum(of(server, model, c, "errors").values())
        label = f"{med:.2f}x {ref} ({lo:.2f} - {hi:.2f})" if med == med else "-"
        out.append(f"| {model} | {c} | {server} | {q['req_s']:.0f} | {q['p50_ms']:.3f} | {q['p99_ms']:.2f} | "
                   f"{q['server_cpu_us']:.0f} | {err} | {label} |")
    out += ["", "Ratios are of req/s: digits_cnn rows against the floor; on cnn32 and cnn32_head, batching "
            "against builtin batch 1, and builtin batch 1 against the floor. cnn32_head "
            "(:func:`cnn32_head`, built here) is a 32x32x3 CNN whose cost is a dense head (33 MB of weights, a few "
            "ms per image at batch 1); cnn32 is the builtin six-convolution CNN, whose cost per image barely falls "
            f"with the batch. The SLO here: p99 <= {rf.get('slo_ms', SLO_MS):g} ms. `kserve` is the kserve engine "
            "(KServe's ModelServer behind the workbench's guard, no batching; from .venv-kserve); `container batch 1` "
            "is the `workbench image` of the same bundle, run by podman (runc, host network) with `--max-batch-size 1 "
            "--batch-policy idle`, its CPU read from the container's processes"
            + "".join(f"; {k} skipped: {v}" for k, v in rf.get("skipped", {}).items())
            + "".join(f"; image {t}: {b['size_bytes'] / 1e6:.0f} MB, built in {b['seconds']:.1f} s"
                      for t, b in rf.get("images", {}).items()) + ".",
            "", "`workbench load` (open loop, 50 QPS, 10 s) against wrk at c=1, on the builtin batch 1 server, "
            "alternated in the same run:", "",
            "| round | wrk p50 ms | workbench load p50 ms | workbench load p99 ms | late sends | valid | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rf["cross_check"]:
        out.append(f"| {r['round']} | {r['wrk_p50_ms']:.3f} | {r['load_p50_ms']:.3f} | {r['load_p99_ms']:.3f} | "
                   f"{r['late_fraction']:.1%} | {r['valid']} | {r['loadavg']:.1f} |")
    return "\n".join(out)


NOTES = """## Reading these numbers

* `max QPS at SLO` is the answered rate at the highest offered rate that passed (p99 within the
  SLO, < 0.1% errors), found by ramp + bisection with converging windows; `rates tried` counts the
  points. `load valid: False` means more than 1% of sends left over 1 ms after their scheduled
  time: the event loop's timers have 1 ms resolution and, on a shared 2-core machine, the client
  waits for a core like everything else. That lateness is *inside* the latencies (they are
  measured from the scheduled time), so it makes the figures pessimistic, never optimistic.
* The answers under load were scored against the eval labels in every trial: `accuracy = offline`
  says each served answer had the same top-1 as the in-process session.
* What batching buys is the ratio of a `batch<=8` row to the `batch 1` row of the same model. It
  pays on digits_cnn, whose cost per request is HTTP and JSON, not the model; on cnn32 (six
  convolutions, about 3 ms per image, a cost that barely falls per image in a batch) a batch of two
  takes twice as long as one, so within a 10 ms p99 batching serves less than batch 1: the
  server trial measures this for each model rather than assuming batching helps.
* The SLO is `--slo-ms` (default 10 ms). On a busy shared machine (load average 7 and more) a p99
  of 10 ms can be out of reach even at a few QPS; read the load average above before the figures.
* In-process p50 is one `session.run` of one sample; the server p50 adds HTTP, JSON, the event
  loop and the scheduling of two processes (server and client) that both sleep between requests.
"""


def render(res: dict) -> str:
    fp = res["fingerprint"]
    out = ["# Serving under load", "",
           f"Generated by `benchmarks/serving.py` on {res['date']} ({fp['cpu'].get('model', '?')}, {fp['cpu'].get('cores', '?')} cores). "
           f"Open-loop Poisson load on 127.0.0.1 from the same machine (client and server share the cores). "
           f"SLO: p99 <= {res.get('slo_ms', SLO_MS):g} ms, errors < 0.1%. Load average (1, 5, 15 min) "
           f"before: {_load(res, 'loadavg_before')}, after: {_load(res, 'loadavg_after')} - on a shared "
           "machine the other processes take cores from both server and client.", "",
           "## QPS at the SLO per engine and batching", "",
           "| model | configuration | max QPS at SLO | p50 ms | p99 ms | mean batch | server CPU % | peak RSS MB "
           "| shed (503) | accuracy = offline | load valid | rates tried | trial s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["trials"]:
        if "skipped" in r:
            out.append(f"| {r['model']} | {r['config']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        f = lambda v, d=2: "-" if v is None or v != v else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
        out.append(f"| {r['model']} | {r['config']} | {f(r['max_qps_at_slo'], 0)} | {f(r['latency_p50_ms'])} | "
                   f"{f(r['latency_p99_ms'])} | {f(r['mean_batch_size'])} | {f(r['server_cpu_pct'], 0)} | "
                   f"{f(r['peak_rss_mb'], 0)} | {r['rejected_requests']} | {r['accuracy_under_load_matches_offline']} | "
                   f"{r['load_valid']} | {r['points']} | {f(r['total_seconds'], 0)} |")
    out += ["", "## Server p50 at a low rate vs in-process", "",
            "| model | in-process p50 ms | server p50 ms (JSON) | server p50 ms (.npy) | server p99 ms | late sends | valid |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["low_rate"]:
        out.append(f"| {r['model']} | {r['in_process_p50_ms']:.3f} | {r['server_p50_ms']:.3f} | "
                   f"{r['server_npy_p50_ms']:.3f} | {r['server_p99_ms']:.3f} | {r['late_fraction']:.1%} | {r['valid']} |")
    out += ["", "## Our load generator vs mlcommons-loadgen", ""]
    lg = res["loadgen"]
    if "skipped" in lg:
        out.append(f"Not measured: {lg['skipped']}.")
    else:
        out += [f"Same server (digits_cnn, builtin, policy idle), {lg['rate']:g} QPS offered for {lg['seconds']:g} s "
                "each, alternated. LoadGen's SUT posts on 64 keep-alive connections from threads.", "",
                "| round | generator | achieved QPS | p50 ms | p90 ms | p99 ms | p99 ratio ours/LoadGen |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for i, r in enumerate(lg["rows"], 1):
            a, b = r["loadgen"], r["ours"]
            ratio = b["p99_ms"] / a["p99_ms"] if a.get("p99_ms") else float("nan")
            out.append(f"| {i} | mlcommons-loadgen | {a['achieved_qps']:.1f} | {a['p50_ms']:.3f} | {a['p90_ms']:.3f} | "
                       f"{a['p99_ms']:.3f} | |")
            out.append(f"| {i} | workbench load | {b['achieved_qps']:.1f} | {b['p50_ms']:.3f} | {b['p90_ms']:.3f} | "
                       f"{b['p99_ms']:.3f} | {ratio:.2f} |")
    out += ["", f"Benchmark wall time: {res.get('seconds', 0) / 60:.1f} min.", "", NOTES]
    return "\n".join(out)


def _load(res: dict, key: str) -> str:
    return ", ".join(f"{v:.1f}" for v in res.get(key, [])) or "?"


# --- gRPC beside REST (issue 20, item 2) ---------------------------------------------------

GRPC_CONFIGS = {"batch 1": dict(max_batch_size=1, batch_policy="idle"),
                "batch<=8 idle": dict(max_batch_size=8, batch_policy="idle")}

GRPC_CLIENTS = ("REST JSON", "REST binary (.npy)", "gRPC raw_input_contents", "gRPC typed contents")

GRPC_ROUNDS, GRPC_REQUESTS = 2, 3000


def grpc_closed_loop(target: str, request, concurrency: int, requests: int) -> dict:
    """``concurrency`` client threads, one channel each, each sending the next ModelInfer when its
    answer is in (as ``workbench load --concurrency`` does over HTTP); ``requests`` in all."""
    import threading

    import grpc
    import numpy as np

    from workbench.serve.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    counter, take = iter(range(requests)), threading.Lock()
    latencies: list[float] = []
    errors = [0]
    ready = threading.Barrier(concurrency + 1)

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            call = GRPCInferenceServiceStub(channel).ModelInfer
            call(request, timeout=30)  # connected before the clock starts
            ready.wait()
            mine = []
            while True:
                with take:
                    if next(counter, None) is None:
                        break
                t0 = time.perf_counter()
                try:
                    call(request, timeout=30)
                except grpc.RpcError:
                    errors[0] += 1
                    continue
                mine.append(time.perf_counter() - t0)
            with take:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    ready.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1e3
    return {"achieved_qps": len(ms) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors[0]}



def grpc_side_by_side() -> dict:
    """digits_cnn (onnxruntime fp32, 1 thread) served by the builtin engine with ``--grpc-port``:
    REST (JSON and .npy bodies, ``workbench load``'s closed loop) and gRPC (raw and typed
    contents, :func:`grpc_closed_loop`) at c=1 and c=8 against the same server, alternated in
    ``GRPC_ROUNDS`` rounds; every client in Python threads on the same 2 cores as the server."""
    import numpy as np

    from workbench.config.params import TrialParams
    from workbench.export.bundle import write_bundle
    from workbench.serve import ServeOptions, engine, free_port, load
    from workbench.serve.grpc_predict_v2_pb2 import ModelInferRequest
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    d, _, art = artifact_for(p)
    bundle = write_bundle(HERE / "serving-runs" / "bundle-grpc", p, art, d)
    x = np.ascontiguousarray(d.x_eval[:1])
    raw, typed = (ModelInferRequest(model_name="model") for _ in range(2))
    for r in (raw, typed):
        r.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    raw.raw_input_contents.append(x.tobytes())
    typed.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    json_items, npy_items = load.payloads(x), load.payloads(x, binary=True)
    rows = []
    for label, cfg in GRPC_CONFIGS.items():
        eng = engine("builtin", bundle, ServeOptions(port=free_port(), grpc_port=free_port(), **cfg))
        eng.start()
        try:
            eng.wait_ready(120)
            run = {
                "REST JSON": lambda c, n: load.run(eng.infer_url, concurrency=c, requests=n, items=json_items),
                "REST binary (.npy)": lambda c, n: load.run(eng.infer_url, concurrency=c, requests=n, items=npy_items),
                "gRPC raw_input_contents": lambda c, n: grpc_closed_loop(eng.grpc_target, raw, c, n),
                "gRPC typed contents": lambda c, n: grpc_closed_loop(eng.grpc_target, typed, c, n),
            }
            for client in GRPC_CLIENTS:  # warm-up, not recorded
                run[client](8, 500)
            for rnd in range(GRPC_ROUNDS):
                for c in (1, 8):
                    order = GRPC_CLIENTS if rnd % 2 == 0 else GRPC_CLIENTS[::-1]
                    for client in order:
                        r = run[client](c, GRPC_REQUESTS)
                        rows.append({"server": label, "client": client, "concurrency": c, "round": rnd + 1,
                                     **{k: r.get(k) for k in ("achieved_qps", "p50_ms", "p99_ms")},
                                     "errors": r.get("errors") if isinstance(r.get("errors"), int)
                                     else sum((r.get("errors") or {}).values())})
                        print(rows[-1], flush=True)
        finally:
            eng.stop()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "fingerprint": fingerprint.collect(),
            "loadavg": os.getloadavg(), "requests": GRPC_REQUESTS, "rows": rows}



def render_grpc(res: dict) -> str:
    fp = res["fingerprint"]
    out = ["## gRPC beside REST", "",
           f"Generated by `benchmarks/serving.py --grpc` on {res['date']} ({fp['cpu'].get('model', '?')}, "
           f"{fp['cpu'].get('cores', '?')} cores; load average at the end {_load(res, 'loadavg')}). One builtin "
           "server per configuration (digits_cnn, onnxruntime fp32, 1 thread) with `--grpc-port`; closed-loop "
           f"clients (Python threads, one connection or channel each, {res['requests']} requests a point) on the "
           "same machine, REST and gRPC alternated in rounds against the same server, all numbers from this one "
           "run. Compare rows within this table only: the clients share the 2 cores with the server, so on a "
           "busy machine two rounds of one point differ as much as the load moved between them; they show gRPC "
           "answering through the same batcher at rates of the same order as REST, and rank nothing unless the "
           "rounds agree. The gRPC client is grpcio's synchronous stub: its own per-call cost is in its "
           "latencies, as the REST client's is in REST's.", "",
           "| server | client | c | round | req/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(res["rows"], key=lambda r: (r["server"], r["concurrency"], r["client"], r["round"])):
        out.append(f"| {r['server']} | {r['client']} | {r['concurrency']} | {r['round']} | {r['achieved_qps']:,.0f} | "
                   f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |")
    return "\n".join(out)


def measure_rest_floor() -> dict:
    before = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_before": os.getloadavg()}
    return {**before, "slo_ms": SLO_MS, **rest_floor(), "loadavg_after": os.getloadavg()}


def _with_section(page: str, section: str) -> str:
    """``page`` with its section of ``section``'s heading replaced by ``section`` (up to the next
    ``## `` heading), or inserted before the load generator's section."""
    heading = section.split(" (", 1)[0]
    at = page.find(heading)
    if at < 0:
        at = page.find("## Load generator validity")
        at = len(page) if at < 0 else at
        return page[:at] + section + "\n\n" + page[at:]
    end = page.find("\n## ", at + len(heading))
    return page[:at] + section + ("\n" + page[end:] if end >= 0 else "\n")


def main() -> None:
    """The whole page; ``--rest`` (the REST side by side with the floor) or ``--grpc`` (gRPC
    beside REST) measures only its part and replaces its section in place, the rest of the page
    as it is; ``--render`` only rewrites the page (with ``--grpc``: only that section)."""
    grpc_json, page_path = HERE / "serving_grpc.json", HERE / "serving.md"
    if "--grpc" in sys.argv:
        if "--render" not in sys.argv:
            grpc_json.write_text(json.dumps(grpc_side_by_side(), indent=2, default=str))
        section = render_grpc(json.loads(grpc_json.read_text()))
        page_path.write_text(_with_section(page_path.read_text() if page_path.exists() else "", section))
        print(section)
        return
    if "--rest" in sys.argv:
        res = json.loads((HERE / "serving.json").read_text())
        res["rest_floor"] = measure_rest_floor()
        (HERE / "serving.json").write_text(json.dumps(res, indent=2, default=str))
        page_path.write_text(_with_section(page_path.read_text(), render_rest_floor(res)))
        print(render_rest_floor(res))
        return
    if "--render" not in sys.argv:
        t0 = time.time()
        res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "fingerprint": fingerprint.collect(),
               "slo_ms": SLO_MS, "loadavg_before": os.getloadavg(),
               "trials": server_trials(), "low_rate": low_rate(), "loadgen": loadgen_comparison(),
               "rest_floor": measure_rest_floor()}
        res["seconds"] = time.time() - t0
        res["loadavg_after"] = os.getloadavg()
        (HERE / "serving.json").write_text(json.dumps(res, indent=2, default=str))
        grpc_json.write_text(json.dumps(grpc_side_by_side(), indent=2, default=str))
    res = json.loads((HERE / "serving.json").read_text())
    page, old = render(res), page_path.read_text() if page_path.exists() else ""
    if "rest_floor" in res:
        page += "\n\n" + render_rest_floor(res)  # a full run renders the page anew
    if grpc_json.exists():
        page += "\n\n" + render_grpc(json.loads(grpc_json.read_text()))
    kept = old.find("## Load generator validity")  # benchmarks/load_generator.py's section and what follows
    page_path.write_text(page + ("\n\n" + old[kept:] if kept >= 0 else ""))
    print(page_path.read_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-unguarded"]:
        serve_unguarded(*sys.argv[2:5])
    else:
        main()
