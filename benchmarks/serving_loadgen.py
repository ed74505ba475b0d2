"""MLCommons LoadGen's Server scenario against a v2 infer URL (for benchmarks/serving.py).

Runs under any Python with ``mlcommons-loadgen`` and numpy (the benchmark uses .venv-kserve,
so the workbench's environment does not carry it):
``python benchmarks/serving_loadgen.py URL BODY.json RATE SECONDS`` prints one JSON line with
LoadGen's own latency percentiles (its Server scenario: Poisson arrivals, latency from the
scheduled issue time). The SUT posts each query's body on one of 64 keep-alive connections.
"""

import http.client
import json
import queue
import re
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

import mlperf_loadgen as lg


def main() -> None:
    url, body_path, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    body = Path(body_path).read_bytes()
    u = urllib.parse.urlparse(url)
    work: queue.Queue = queue.Queue()
    status = {"errors": 0}

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        while True:
            q = work.get()
            if q is None:
                return
            try:
                conn.request("POST", u.path, body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    status["errors"] += 1
            except OSError:
                status["errors"] += 1
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0)])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(64)]
    for t in threads:
        t.start()

    def issue(queries):
        for q in queries:
            work.put(q)

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(1024, 1024, lambda s: None, lambda s: None)
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = rate
    settings.server_target_latency_ns = 10_000_000
    settings.min_duration_ms = int(seconds * 1000)
    settings.max_duration_ms = int(seconds * 1000 * 3)
    settings.min_query_count = int(rate * seconds)
    with tempfile.TemporaryDirectory() as out:
        log = lg.LogOutputSettings()
        log.outdir = out
        log.copy_summary_to_stdout = False
        ls = lg.LogSettings()
        ls.log_output = log
        lg.StartTestWithLogSettings(sut, qsl, settings, ls)
        summary = (Path(out) / "mlperf_log_summary.txt").read_text()
    for _ in threads:
        work.put(None)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    res = {"errors": status["errors"]}
    for key, pat in {"p50_ms": r"50.00 percentile latency \(ns\)\s*:\s*(\d+)",
                     "p90_ms": r"90.00 percentile latency \(ns\)\s*:\s*(\d+)",
                     "p99_ms": r"99.00 percentile latency \(ns\)\s*:\s*(\d+)",
                     "p99.9_ms": r"99.90 percentile latency \(ns\)\s*:\s*(\d+)"}.items():
        m = re.search(pat, summary)
        res[key] = int(m.group(1)) / 1e6 if m else None
    m = re.search(r"Completed samples per second\s*:\s*([\d.]+)", summary)
    res["achieved_qps"] = float(m.group(1)) if m else None
    print(json.dumps(res))


if __name__ == "__main__":
    main()
