"""The load generator: open-loop Poisson arrivals (or closed loop) against a v2 infer endpoint.

Open loop: request i is *scheduled* at the i-th arrival of a Poisson process of rate QPS and
sent at that time whatever happened to the earlier ones; its latency is measured from the
scheduled time, so a server that stalls is charged for every request that should have been
sent meanwhile (no coordinated omission). Latencies of answered requests go into an
HdrHistogram (1 us .. 60 s, 3 significant digits). The generator checks itself: a send that
left more than 1 ms after its scheduled time is *late*; the result is marked invalid when more
than 1% of sends were late or its own CPU use was over 80% of one core (then the numbers
describe the client, not the server).

Closed loop (``concurrency``): N clients each send the next request when the previous answer
arrived; latency from the send.

Requests carry real samples (``--data D.npz``: ``x_eval``, or ``x_eval.<name>`` per input of a
model with several, and optionally ``y_eval``) when given,
and the answers are scored: ``accuracy`` over the distinct samples answered, and whether every
answer to the same sample was identical (``answers_consistent``).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.data import inputs
from workbench.serve import protocol

LATE_MS = 1.0
MAX_LATE_FRACTION = 0.01
MAX_CLIENT_CPU = 0.80
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class LoadError(WorkbenchError):
    """Bad load-generator arguments or an unreachable endpoint."""


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str
    index: int  # the eval sample it carries (-1: synthetic)
    label: int | None = None


def payloads(x, y: np.ndarray | None = None, binary: bool = False) -> list[Payload]:
    """One request per sample of ``x`` (an array, or a dict of named arrays for a model with
    several inputs): JSON tensors, or ``.npy`` bodies with ``binary`` (single input only)."""
    if binary and isinstance(x, dict):
        raise LoadError("--binary: a .npy body holds one array; this data has several inputs")
    out = []
    for i in range(inputs.rows(x)):
        row = inputs.take(x, i, i + 1)
        body = protocol.request_npy(row) if binary else protocol.request_json(row)
        out.append(Payload(body, protocol.NPY if binary else "application/json", i,
                           None if y is None else int(y[i])))
    return out


def payloads_for(url: str, data: str | Path | None = None, seed: int = 0, binary: bool = False,
                 n_synthetic: int = 64) -> list[Payload]:
    """Payloads from a ``.npz`` (``x_eval``/``y_eval``), else random inputs of the model's shape
    read from its v2 metadata (``GET /v2/models/{name}``)."""
    if data:
        path = Path(data)
        if not path.is_file():
            raise LoadError(f"--data: no such file {path}")
        with np.load(path) as npz:
            named = {k.removeprefix("x_eval."): npz[k] for k in npz.files if k.startswith("x_eval.")}
            if "x_eval" not in npz and not named:
                raise LoadError(f"--data {path}: no x_eval array (has {', '.join(npz.files)})")
            x = npz["x_eval"] if "x_eval" in npz else named
            return payloads(x, npz["y_eval"] if "y_eval" in npz else None, binary)
    meta_url = url.rsplit("/infer", 1)[0]
    try:
        with urllib.request.urlopen(meta_url, timeout=5) as r:
            meta = json.loads(r.read())
    except (OSError, ValueError) as err:
        raise LoadError(f"{meta_url}: cannot read the model's metadata ({err}); pass --data") from None

    rng = np.random.default_rng(seed)
    x = {}
    for t in meta["inputs"]:
        shape = (n_synthetic, *[abs(int(s)) for s in t["shape"][1:]])
        dtype = np.dtype(protocol.DATATYPES.get(t["datatype"], np.float32))
        x[t["name"]] = (rng.random(shape).astype(dtype) if dtype.kind == "f"
                        else rng.integers(0, 2, shape).astype(dtype))
    x = next(iter(x.values())) if len(x) == 1 else x
    return [Payload(p.body, p.content_type, -1) for p in payloads(x, None, binary)]


@dataclass
class Recorder:
    """Everything measured during one load run (times from ``time.perf_counter``)."""

    start: float = 0.0
    done_at: list[float] = field(default_factory=list)  # answered (200) requests
    latency_s: list[float] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    late: int = 0
    sent: int = 0
    fail_at: list[float] = field(default_factory=list)
    answers: dict[int, set[int]] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Answered requests that completed in [t0, t1): count and percentiles (ms)."""
        done = np.asarray(self.done_at)
        lat = np.asarray(self.latency_s)[(done >= t0) & (done < t1)] * 1e3
        fails = int(np.sum((np.asarray(self.fail_at) >= t0) & (np.asarray(self.fail_at) < t1)))
        out: dict[str, Any] = {"answered": int(lat.size), "failed": fails}
        for p in PERCENTILES:
            out[f"p{p:g}_ms"] = float(np.percentile(lat, p)) if lat.size else float("nan")
        return out

    def accuracy(self) -> dict[str, Any]:
        scored = [i for i in self.answers if i in self.labels]
        if not scored:
            return {}
        consistent = all(len(v) == 1 for v in self.answers.values())
        right = sum(next(iter(self.answers[i])) == self.labels[i] for i in scored)
        return {"accuracy": 100.0 * right / len(scored), "samples_scored": len(scored),
                "answers_consistent": consistent}


def _top1(body: bytes, content_type: str, headers) -> int:
    return int(np.argmax(protocol.response_array(body, content_type, dict(headers)).reshape(-1)))


async def _send(session, url: str, p: Payload, scheduled: float, rec: Recorder, score: bool) -> None:
    started = time.perf_counter()
    rec.sent += 1
    if started - scheduled > LATE_MS / 1e3:
        rec.late += 1
    try:
        async with session.post(url, data=p.body, headers={"Content-Type": p.content_type}) as r:
            body = await r.read()
            status = r.status
            headers = r.headers
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - connection errors are results, not crashes
        rec.status[type(err).__name__] += 1
        rec.fail_at.append(time.perf_counter())
        return
    now = time.perf_counter()
    rec.status[str(status)] += 1
    if status != 200:
        rec.fail_at.append(now)
        return
    rec.done_at.append(now)
    rec.latency_s.append(now - scheduled)
    if score and p.index >= 0:
        rec.answers.setdefault(p.index, set()).add(_top1(body, r.content_type, headers))
        if p.label is not None:
            rec.labels[p.index] = p.label


def _session(max_connections: int, timeout: float):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def open_loop(url: str, items: list[Payload], rate: float, duration: float, seed: int = 0,
                    rec: Recorder | None = None, timeout: float = 30.0, max_connections: int = 256,
                    score: bool = True, keep_going: Callable[[float], bool] | None = None) -> Recorder:
    """Poisson arrivals at ``rate`` for ``duration`` s (``keep_going(now)`` may stop it earlier)."""
    rec = rec or Recorder()
    rng = np.random.default_rng(seed)
    tasks: set[asyncio.Task] = set()
    async with _session(max_connections, timeout) as session:
        rec.start = start = time.perf_counter()
        t, i = start, 0
        while True:
            t += rng.exponential(1.0 / rate)
            if t - start > duration or (keep_going and not keep_going(time.perf_counter())):
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_send(session, url, items[i % len(items)], t, rec, score))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
    return rec


async def closed_loop(url: str, items: list[Payload], concurrency: int, requests: int,
                      timeout: float = 30.0, score: bool = True) -> Recorder:
    """``concurrency`` clients, ``requests`` requests in all, each sent when its client is free."""
    rec = Recorder()
    counter = iter(range(requests))

    async def client(session):
        for i in counter:
            await _send(session, url, items[i % len(items)], time.perf_counter(), rec, score)

    async with _session(concurrency, timeout) as session:
        rec.start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return rec


def summarize(rec: Recorder, elapsed: float, cpu: float, offered: float | None) -> dict[str, Any]:
    """HdrHistogram percentiles, achieved QPS, errors by status, lateness and validity."""
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, 60_000_000, 3)
    for s in rec.latency_s:
        hist.record_value(max(1, int(s * 1e6)))
    answered = len(rec.latency_s)
    total = sum(rec.status.values())
    out: dict[str, Any] = {
        "offered_qps": offered, "achieved_qps": answered / elapsed if elapsed > 0 else 0.0,
        "requests": total, "answered": answered, "seconds": elapsed,
        "errors": {k: v for k, v in sorted(rec.status.items()) if k != "200"},
        "error_fraction": (total - answered) / total if total else 0.0,
        "late_sends": rec.late, "late_fraction": rec.late / rec.sent if rec.sent else 0.0,
        "client_cpu": cpu,
    }
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = hist.get_value_at_percentile(p) / 1e3 if answered else float("nan")
    out["mean_ms"] = hist.get_mean_value() / 1e3 if answered else float("nan")
    reasons = []
    if offered is not None and out["late_fraction"] > MAX_LATE_FRACTION:
        reasons.append(f"{out['late_fraction']:.1%} of sends were more than {LATE_MS:g} ms late")
    if cpu > MAX_CLIENT_CPU:
        reasons.append(f"load generator CPU {cpu:.0%} of a core")
    out["valid"] = not reasons
    out["invalid_reasons"] = reasons
    out.update(rec.accuracy())
    return out


def _loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_async(coro):
    """Run ``coro`` to completion on a fresh (uvloop) event loop; in a thread of its own when this
    thread already runs a loop (a Jupyter kernel, papermill), so it works from a notebook too."""
    def go():
        loop = _loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load") as ex:
        return ex.submit(go).result()


def run(url: str, rate: float | None = None, duration: float | None = None, concurrency: int | None = None,
        requests: int | None = None, data: str | Path | None = None, seed: int = 0, binary: bool = False,
        items: list[Payload] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """One load run, open loop (``rate`` + ``duration``) or closed loop (``concurrency`` + ``requests``)."""
    if (rate is None) == (concurrency is None):
        raise LoadError("give either --rate QPS --duration S (open loop) or --concurrency N --requests M")
    if rate is not None and (rate <= 0 or not duration or duration <= 0):
        raise LoadError(f"--rate {rate} --duration {duration}: both must be positive")
    if concurrency is not None and (concurrency < 1 or not requests or requests < 1):
        raise LoadError(f"--concurrency {concurrency} --requests {requests}: both must be at least 1")
    items = items or payloads_for(url, data, seed, binary)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if rate is not None:
        rec = run_async(open_loop(url, items, rate, duration, seed, timeout=timeout))
    else:
        rec = run_async(closed_loop(url, items, concurrency, requests, timeout=timeout))
    elapsed = time.perf_counter() - t0
    cpu = (time.process_time() - cpu0) / elapsed
    out = summarize(rec, elapsed, cpu, rate)
    out["mode"] = "open" if rate is not None else "closed"
    if concurrency is not None:
        out["concurrency"] = concurrency
    return out


def render(r: dict[str, Any]) -> str:
    """The human summary ``workbench load`` prints."""
    head = (f"offered {r['offered_qps']:g} QPS (open loop), " if r["mode"] == "open"
            else f"closed loop, {r['concurrency']} clients, ")
    lines = [head + f"achieved {r['achieved_qps']:.1f} QPS over {r['seconds']:.2f} s, "
             f"{r['answered']}/{r['requests']} answered",
             "latency ms: " + ", ".join(f"p{p:g} {r[f'p{p:g}_ms']:.3f}" for p in PERCENTILES)
             + f", mean {r['mean_ms']:.3f}",
             "errors: " + (", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"),
             f"late sends (> {LATE_MS:g} ms): {r['late_sends']} ({r['late_fraction']:.2%}); "
             f"client CPU {r['client_cpu']:.0%}"]
    if "accuracy" in r:
        lines.append(f"accuracy of the answers: {r['accuracy']:.2f}% on {r['samples_scored']} samples"
                     f"{'' if r['answers_consistent'] else ' (answers to the same sample differed!)'}")
    lines.append("result: valid" if r["valid"] else "result: INVALID - " + "; ".join(r["invalid_reasons"]))
    return "\n".join(lines)
