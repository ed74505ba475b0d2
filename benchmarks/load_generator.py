"""Is the open-loop load generator valid on this machine? Late sends and its own CPU at 50 to
1,000 QPS against an idle builtin server, beside the machine's own wake-up lateness (a bare
sleep loop at normal and at real-time priority), the same generator at normal priority (a child
that gave up root) and the previous generator (asyncio + uvloop + aiohttp, kept below as the
reference), all in one run;
then its p50 against wrk (closed loop, 1 thread, 1 connection) and its percentiles against
mlcommons-loadgen's Server scenario at the same offered rates.

Usage: ``python benchmarks/load_generator.py`` (about 7 minutes; wrk from Debian's ``wrk``
package, LoadGen from a Python that imports ``mlperf_loadgen``: ``WORKBENCH_LOADGEN_PYTHON``,
default ``.venv-kserve/bin/python``; either is skipped, and said so, when missing). Writes
``load_generator.json`` (the latest run) and adds a dated section ``## Load generator validity``
to ``serving.md`` (earlier runs' sections stay; the top of that page is ``serving.py``'s). ``--render`` re-renders from the JSON.

The machine is shared and noisy: only numbers of one run are compared, and the page states the
load average before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.config.params import TrialParams
from workbench.core import fingerprint
from workbench.export.bundle import write_bundle
from workbench.serve import ServeOptions, engine, free_port, load, protocol
from workbench.variants import artifact_for

HERE = Path(__file__).resolve().parent
RATES = (50.0, 200.0, 500.0, 1000.0)
SECONDS = 5.0
ROUNDS = 2
MARK = "## Load generator validity"


def floor(rate: float, seconds: float, seed: int, realtime: bool = False) -> dict:
    """The same schedule and wait (sleep, then spin) with nothing sent: how late this machine
    wakes a sleeping thread right now, at normal priority, or (``realtime``) at the priority the
    generator's sender gets. No generator can be more punctual than its floor."""
    offsets = load.arrivals(rate, seconds, seed)
    late = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    with load.Realtime() if realtime else contextlib.nullcontext():
        start = time.perf_counter()
        for off in offsets.tolist():
            load.wait_until(start + off)  # the very wait the generator uses
            late.append(time.perf_counter() - start - off)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    late_ms = np.asarray(late) * 1e3
    return {"late_fraction": float(np.mean(late_ms > load.LATE_MS)), "late_p99_ms": float(np.percentile(late_ms, 99)),
            "client_cpu": cpu}


async def _previous(url: str, body: bytes, rate: float, seconds: float, seed: int) -> load.Recorder:
    """The generator before 2026-11-30, as it was: a uvloop timer per arrival, a task per
    request through aiohttp, lateness taken when the task starts."""
    import aiohttp

    rec = load.Recorder()
    rng = np.random.default_rng(seed)
    tasks: set[asyncio.Task] = set()

    async def send(session, scheduled):
        started = time.perf_counter()
        rec.sent += 1
        rec.late += started - scheduled > load.LATE_MS / 1e3
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            ok = r.status == 200
        now = time.perf_counter()
        if ok:
            rec.done_at.append(now)
            rec.latency_s.append(now - scheduled)
        rec.status[str(r.status)] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        rec.start = t = start = time.perf_counter()
        while True:
            t += rng.exponential(1.0 / rate)
            if t - start > seconds:
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(session, t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    return rec


def previous(url: str, body: bytes, rate: float, seconds: float, seed: int) -> dict:
    import uvloop

    cpu0, t0 = time.process_time(), time.perf_counter()
    loop = uvloop.new_event_loop()
    try:
        rec = loop.run_until_complete(_previous(url, body, rate, seconds, seed))
    finally:
        loop.close()
    elapsed = time.perf_counter() - t0
    return _pick(load.summarize(rec, elapsed, (time.process_time() - cpu0) / elapsed, rate))


def ours(url: str, items, rate: float, seconds: float, seed: int) -> dict:
    r = load.run(url, rate=rate, duration=seconds, items=items, seed=seed)
    return {**_pick(r), "sender_priority": r["sender_priority"]}


def unprivileged(fn) -> dict:
    """``fn()`` in a forked child that gave up root: what a user without CAP_SYS_NICE gets (the
    sender at normal priority), measured beside the rest in the same run."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child returns nothing to its caller: it only writes its result and exits
        code = 1
        try:
            os.close(read)
            os.setresuid(65534, 65534, 65534)
            os.write(write, json.dumps(fn()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if status:
        raise RuntimeError(f"the unprivileged load run failed (wait status {status})")
    return json.loads(text)


def _pick(r: dict) -> dict:
    return {k: r[k] for k in ("achieved_qps", "p50_ms", "p90_ms", "p99_ms", "late_fraction", "client_cpu",
                              "error_fraction", "valid")}


def lateness(url: str, items, body: bytes) -> list[dict]:
    rows = []
    for rnd in range(ROUNDS):
        for rate in RATES:
            seed = 100 * rnd + int(rate)
            order = [("floor (no sends)", lambda: floor(rate, SECONDS, seed)),
                     ("floor, real-time (no sends)", lambda: floor(rate, SECONDS, seed, realtime=True)),
                     ("previous (uvloop + aiohttp)", lambda: previous(url, body, rate, SECONDS, seed)),
                     ("workbench load", lambda: ours(url, items, rate, SECONDS, seed))]
            if os.geteuid() == 0:
                order.append(("workbench load, normal priority",
                              lambda: unprivileged(lambda: ours(url, items, rate, SECONDS, seed))))
            for name, fn in (order if rnd % 2 == 0 else order[::-1]):
                r = fn()
                rows.append({"round": rnd + 1, "rate": rate, "generator": name, "loadavg": os.getloadavg()[0], **r})
                print(f"round {rnd + 1} {rate:6g} QPS {name:28s} late {r['late_fraction']:.2%} "
                      f"cpu {r['client_cpu']:.0%}", flush=True)
    return rows


def wrk(url: str, body: bytes, seconds: float = 10.0) -> dict:
    """wrk, closed loop, 1 thread, 1 connection, against our closed loop (1 client) and our open
    loop at 50 QPS, alternated."""
    exe = shutil.which("wrk")
    if not exe:
        return {"skipped": "wrk is not installed (`apt-get install -y wrk`)"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = {json.dumps(body.decode())}\n")
        items = [load.Payload(body, "application/json", -1)]
        for rnd in range(ROUNDS):
            out = subprocess.run([exe, "-t1", "-c1", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                                 capture_output=True, text=True, timeout=seconds + 60).stdout
            p50 = _wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
            p99 = _wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            closed = load.run(url, concurrency=1, requests=max(200, int(rps * seconds)), items=items)
            opened = load.run(url, rate=50, duration=seconds, items=items, seed=rnd)
            rows.append({"round": rnd + 1, "wrk": {"p50_ms": p50, "p99_ms": p99, "rps": rps},
                         "ours_closed": {"p50_ms": closed["p50_ms"], "p99_ms": closed["p99_ms"],
                                         "rps": closed["achieved_qps"]},
                         "ours_open_50": {"p50_ms": opened["p50_ms"], "p99_ms": opened["p99_ms"],
                                          "late_fraction": opened["late_fraction"]},
                         "loadavg": os.getloadavg()[0]})
    return {"seconds": seconds, "rows": rows}


def _wrk_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def loadgen(url: str, body: bytes, items, rates=(200.0, 1000.0), seconds: float = 8.0) -> dict:
    py = os.environ.get("WORKBENCH_LOADGEN_PYTHON") or str(HERE.parent / ".venv-kserve" / "bin" / "python")
    probe = subprocess.run([py, "-c", "import mlperf_loadgen"], capture_output=True) if Path(py).exists() else None
    if probe is None or probe.returncode != 0:
        return {"skipped": f"mlcommons-loadgen does not import in {py}"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body.json"
        path.write_bytes(body)
        for rnd in range(ROUNDS):
            for rate in rates:
                out = subprocess.run([py, str(HERE / "serving_loadgen.py"), url, str(path), str(rate), str(seconds)],
                                     capture_output=True, text=True, timeout=seconds * 6 + 60)
                lg = json.loads(out.stdout.strip().splitlines()[-1])
                r = ours(url, items, rate, seconds, rnd)
                rows.append({"round": rnd + 1, "rate": rate, "loadgen": lg, "ours": r, "loadavg": os.getloadavg()[0]})
    return {"seconds": seconds, "rows": rows}


def measure() -> dict:
    p = TrialParams.parse({"model": "digits_cnn", "data": "digits"})
    d, _, art = artifact_for(p)
    body = protocol.request_json(np.ascontiguousarray(d.x_eval[:1]))
    items = [load.Payload(body, "application/json", -1)]
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "fingerprint": fingerprint.collect(),
           "loadavg_before": os.getloadavg(), "seconds_per_run": SECONDS}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", p, art, d)
        eng = engine("builtin", bundle, ServeOptions(port=free_port(), batch_policy="idle"))
        eng.start(log=Path(tmp) / "server.log")
        try:
            eng.wait_ready(120)
            load.run(eng.infer_url, rate=100, duration=2, items=items)  # warm-up
            res["server"] = "digits_cnn, onnxruntime fp32, builtin engine, batch policy idle, otherwise defaults"
            res["lateness"] = lateness(eng.infer_url, items, body)
            res["wrk"] = wrk(eng.infer_url, body)
            res["loadgen"] = loadgen(eng.infer_url, body, items)
        finally:
            eng.stop()
    res["seconds"] = time.time() - t0
    res["loadavg_after"] = os.getloadavg()
    return res


def _priority(res: dict) -> str:
    got = {r["sender_priority"] for r in res["lateness"] if r["generator"] == "workbench load" and "sender_priority" in r}
    return ", ".join(sorted(got)) or "not recorded"


def render(res: dict) -> str:
    la = lambda key: ", ".join(f"{v:.1f}" for v in res[key])  # noqa: E731
    out = [f"{MARK} ({res['date']})", "",
           f"Generated by `benchmarks/load_generator.py` ({res['fingerprint']['cpu'].get('model', '?')}, "
           f"{res['fingerprint']['cpu'].get('cores', '?')} cores). Server: {res['server']}, on 127.0.0.1, "
           f"sharing the 2 cores with the client. Load average (1, 5, 15 min) before: {la('loadavg_before')}, "
           f"after: {la('loadavg_after')}; the 1-min figure at each row is in its last column (other "
           "engineers' test suites ran meanwhile). Compare rows of this section only.", "",
           f"### Late sends (> {load.LATE_MS:g} ms) and client CPU, {res['seconds_per_run']:g} s per run", "",
           "`floor` runs the same schedule and wait with nothing sent: the machine's own wake-up lateness "
           "at that moment for a thread of normal priority; `floor, real-time` the same at the priority "
           f"`workbench load` gives its sender ({_priority(res)}).", "",
           "| round | offered QPS | generator | late sends | client CPU | achieved QPS | p50 ms | p99 ms | valid | load avg |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    f = lambda r, k, d=3: f"{r[k]:.{d}f}" if k in r and r[k] == r[k] else "-"  # noqa: E731
    for r in res["lateness"]:
        out.append(f"| {r['round']} | {r['rate']:g} | {r['generator']} | {r['late_fraction']:.2%} | "
                   f"{r['client_cpu']:.0%} | {f(r, 'achieved_qps', 1)} | {f(r, 'p50_ms')} | {f(r, 'p99_ms')} | "
                   f"{r.get('valid', '-')} | {r['loadavg']:.1f} |")
    saturated = sorted({r["rate"] for r in res["lateness"]
                        if r["generator"] == "workbench load" and r["achieved_qps"] < 0.9 * r["rate"]})
    if saturated:
        out += ["", f"The server answered under 90% of the offered {', '.join(f'{q:g}' for q in saturated)} QPS "
                "in this run: it was saturated there (the machine's load took its cores), not idle, so those "
                "rows show the generator's punctuality but not the target's idle server. Re-check on a quiet machine."]
    out += ["", "### p50 against wrk (closed loop, 1 thread, 1 connection)", ""]
    w = res["wrk"]
    if "skipped" in w:
        out.append(f"Not measured: {w['skipped']}.")
    else:
        out += [f"{w['seconds']:g} s each, alternated; ours: `closed_loop` with 1 client, and the open loop at 50 QPS.", "",
                "| round | wrk p50 ms | ours closed p50 ms | ours open 50 QPS p50 ms | wrk p99 ms | ours closed p99 ms "
                "| wrk req/s | ours closed req/s | open loop late | load avg |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in w["rows"]:
            a, b, c = r["wrk"], r["ours_closed"], r["ours_open_50"]
            out.append(f"| {r['round']} | {a['p50_ms']:.3f} | {b['p50_ms']:.3f} | {c['p50_ms']:.3f} | {a['p99_ms']:.3f} | "
                       f"{b['p99_ms']:.3f} | {a['rps']:.0f} | {b['rps']:.0f} | {c['late_fraction']:.2%} | {r['loadavg']:.1f} |")
    out += ["", "### Percentiles against mlcommons-loadgen (Server scenario, same offered rate)", ""]
    lg = res["loadgen"]
    if "skipped" in lg:
        out.append(f"Not measured: {lg['skipped']}.")
    else:
        out += [f"{lg['seconds']:g} s each, LoadGen first in each pair; its SUT posts on 64 keep-alive "
                "connections from threads (`benchmarks/serving_loadgen.py`).", "",
                "| round | offered QPS | generator | achieved QPS | p50 ms | p90 ms | p99 ms | our late sends | load avg |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in lg["rows"]:
            a, b = r["loadgen"], r["ours"]
            out.append(f"| {r['round']} | {r['rate']:g} | mlcommons-loadgen | {a['achieved_qps']:.1f} | {a['p50_ms']:.3f} | "
                       f"{a['p90_ms']:.3f} | {a['p99_ms']:.3f} | | {r['loadavg']:.1f} |")
            out.append(f"| {r['round']} | {r['rate']:g} | workbench load | {b['achieved_qps']:.1f} | {b['p50_ms']:.3f} | "
                       f"{b['p90_ms']:.3f} | {b['p99_ms']:.3f} | {b['late_fraction']:.2%} | |")
    out += ["", f"Benchmark wall time: {res['seconds'] / 60:.1f} min.", "", READING]
    return "\n".join(out)


READING = """Reading: compare each generator's late sends with the floor of the same round and rate. What
the normal floor shows is the machine (other processes holding both cores delay a sleeping
thread's wake-up); the real-time floor is what is left once the sender may preempt them, which
is the bound for `workbench load` when it runs with the privilege (root or CAP_SYS_NICE); what a
generator adds beyond its floor is its own doing. `workbench load, normal priority` is the
same generator in a child process that gave up root (what a user without the privilege gets).
A late send is one handed to its socket more than 1 ms after its scheduled time; over 1% of
them make a run invalid. Latencies of the open loop count from the scheduled send, so late
sends and a server queue behind them raise its percentiles; LoadGen does the same. Why
real-time priority rather than less work per send: at normal priority this generator's late
sends follow the normal floor and exceed it (`workbench load, normal priority`), with a few
percent of one core of its own work; a SCHED_FIFO thread is not kept waiting for a core. wrk is a
closed loop without a schedule: only its p50 at one connection compares, with our closed loop
(and our open loop at a rate low enough that requests seldom overlap).
"""


def write_section(text: str) -> None:
    """Add this run's dated section to serving.md, or replace it when re-rendered; earlier runs'
    sections and the rest of the page (``serving.py``'s) stay."""
    heading = text.splitlines()[0]
    page = (HERE / "serving.md").read_text()
    at = page.find(heading)
    if at >= 0:
        nxt = re.search(r"^## (?!#)", page[at + len(heading):], re.M)
        page = page[:at].rstrip() + ("\n\n" + page[at + len(heading) + nxt.start():] if nxt else "")
    (HERE / "serving.md").write_text(page.rstrip() + "\n\n" + text)


def main() -> None:
    if "--render" not in sys.argv:
        res = measure()
        (HERE / "load_generator.json").write_text(json.dumps(res, indent=2, default=str))
    res = json.loads((HERE / "load_generator.json").read_text())
    write_section(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
