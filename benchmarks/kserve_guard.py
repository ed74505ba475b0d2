"""The kserve engine's guard (issue 22): its throughput cost, measured side by side.

Two kserve servers on 127.0.0.1 serve the same bundle (digits_cnn, onnxruntime fp32) at once:
one from a checkout of the workbench before the guard, one from this tree. A closed loop
(``workbench.serve.load.run``, 8 clients, JSON bodies of real digits) alternates between them,
the order swapped each round, so both see the same machine. Writes ``benchmarks/kserve_guard.json``
and prints the rows for ``serving.md``.

    git worktree add /tmp/before <commit before the guard>
    .venv/bin/python benchmarks/kserve_guard.py --before /tmp/before [--rounds 6] [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def start(tree: Path, bundle: Path, log: Path) -> tuple[subprocess.Popen, str]:
    from workbench.serve import free_port, kserve

    port = free_port()
    cmd = [str(kserve.python()), "-m", "workbench.serve.kserve_main", str(bundle), "--host", "127.0.0.1",
           "--http_port", str(port), "--model_name", "model", "--workers", "1", "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(tree)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/model/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{tree}: the kserve server was not ready within 180 s (see {log})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of the workbench before the guard")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()

    from workbench.config.params import TrialParams
    from workbench.export.bundle import write_bundle
    from workbench.serve import load
    from workbench.variants import artifact_for

    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    data, _, artifact = artifact_for(p)
    items = load.payloads(data.x_eval[:256])
    load_avg = [os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kserve-guard-") as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", p, artifact, data, metrics={"label": "kserve guard"})
        servers = {name: start(Path(tree).resolve(), bundle, Path(tmp) / f"{name}.log")
                   for name, tree in (("before (no guard)", args.before), ("with the guard", HERE.parent))}
        try:
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    url = f"{servers[name][1]}/v2/models/model/infer"
                    out = load.run(url, concurrency=8, requests=args.requests, items=items)
                    rows.append({"round": r + 1, "server": name, "qps": out["achieved_qps"],
                                 "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "errors": out["errors"],
                                 "load_1min": os.getloadavg()[0]})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    load_avg.append(os.getloadavg())
    result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": rows,
              "load_avg_before_after": load_avg, "requests": args.requests}
    (HERE / "kserve_guard.json").write_text(json.dumps(result, indent=2))
    print("| server | median QPS | min - max QPS | median p50 ms | median p99 ms |\n| --- | --- | --- | --- | --- |")
    for name in ("before (no guard)", "with the guard"):
        mine = [x for x in rows if x["server"] == name]
        qps = [x["qps"] for x in mine]
        print(f"| {name} | {statistics.median(qps):.0f} | {min(qps):.0f} - {max(qps):.0f} | "
              f"{statistics.median(x['p50_ms'] for x in mine):.2f} | {statistics.median(x['p99_ms'] for x in mine):.2f} |")
    ratios = [b["qps"] / a["qps"] for a, b in zip(rows[0::2], rows[1::2])]
    ratios = [(1 / x if rows[2 * i]["server"] == "with the guard" else x) for i, x in enumerate(ratios)]
    print(f"per-round ratio (with / before): median {statistics.median(ratios):.2f}, "
          f"from {min(ratios):.2f} to {max(ratios):.2f}")


if __name__ == "__main__":
    main()
