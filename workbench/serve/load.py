"""The load generator: open-loop Poisson arrivals (or closed loop) against a v2 infer endpoint.

Open loop: request i is *scheduled* at the i-th arrival of a Poisson process of rate QPS and
sent at that time whatever happened to the earlier ones; its latency is measured from the
scheduled time, so a server that stalls is charged for every request that should have been
sent meanwhile (no coordinated omission). Latencies of answered requests go into an
HdrHistogram (1 us .. 60 s, 3 significant digits) once the run is over. The generator checks
itself: a send that left more than 1 ms after its scheduled time is *late*; the result is
marked invalid when more than 1% of sends were late, its own CPU use was over 80% of one core
(then the numbers describe the client, not the server), or more than 0.1% of the requests
failed (a wrong URL answers 404s quickly: fast errors are not latencies).

Why threads and raw sockets rather than an event loop (measured on this 2-core machine,
2026-11-30, benchmarks/serving.md "Load generator validity"): a bare uvloop sleep loop woke about
as punctually as ``time.sleep`` in a thread, but the same loop sending through aiohttp woke over
1 ms late for ~19% of arrivals at 50 QPS with under 10% CPU, and sent 14-53% late at 50-1,000
QPS where the sleep-only floor was 4-14%: a timer fires only once the callbacks ahead of it
(aiohttp's per-request tasks and objects, response handling) have run. Here one *sender*
thread owns the schedule: absolute deadlines from
``time.perf_counter`` (offsets drawn up front, so nothing drifts), ``time.sleep`` until
``SPIN_S`` before the deadline and a short spin, then one ``sendall`` of bytes encoded before
the run on an idle keep-alive connection (HTTP/1.1). A *receiver* thread reads every connection
through epoll, parses responses by Content-Length and keeps ``SPARE`` idle connections open
ahead of the sender (up to ``max_connections``; beyond, requests are pipelined); answers are
decoded for scoring only when asked (:meth:`Recorder.accuracy`).
While the load runs the interpreter's switch interval is lowered (a waiting thread takes the
GIL within 0.1 ms instead of 5 ms) and the garbage collector is paused (a full collection in a
kernel that imported TensorFlow takes milliseconds); both are restored afterwards.

What still made sends late at 1,000 QPS was waiting, not the generator's own work (a fifth
of a core there): a sleeping thread of normal priority that wakes while other processes (the
server, other users' jobs) hold both cores waits for a time slice, and the sender can then wait
again for the interpreter lock held by its receiver, itself waiting for a core. Measured on
this machine at load average 8-11 (benchmarks/serving.md, "Load generator validity", the runs
of 2026-11-30 19:45 and 20:10 UTC), 50 to 1,000 QPS: the bare sleep-then-spin loop with
nothing sent woke over 1 ms late for 13-30% of arrivals, the same loop as a ``SCHED_FIFO``
thread for 0-3.3% (mostly 0); this generator sent 20-58% late at normal priority and 0-0.32%
(once 2%) at real-time priority. So, where the process may (root or ``CAP_SYS_NICE``), the
sending thread and the receiver it starts run at the lowest real-time priority while the load
runs (:class:`Realtime`; restored afterwards): the sender to send on time, the receiver so that
an answer's arrival time is not its wait for a core. Both sleep between events, and the kernel
caps all real-time threads at 95% of every second (``sched_rt_runtime_us``) whatever happens.
A sender that falls ``BEHIND_S`` behind its schedule (a rate beyond what it can send: that run
is invalid anyway) goes back to normal priority for the rest of the run rather than hold a core
at real-time priority. Without the privilege they run as before, and the result says so
(``sender_priority``).

Closed loop (``concurrency``): N client threads, one connection each, each sends the next
request when the previous answer arrived; latency from the send.

Requests carry real samples (``--data D.npz``: ``x_eval``, or ``x_eval.<name>`` per input of a
model with several, and optionally ``y_eval``) when given,
and the answers are scored: ``accuracy`` over the distinct samples answered, and whether every
answer to the same sample was identical (``answers_consistent``).
"""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.data import inputs
from workbench.serve import protocol

LATE_MS = 1.0
MAX_LATE_FRACTION = 0.01
MAX_CLIENT_CPU = 0.80
MAX_ERROR_FRACTION = 0.001
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_MODEL = "model"  # the name both engines serve a bundle as unless told otherwise
SPIN_S = 0.0002  # sleep until this long before a deadline, then spin
CHECK_S = 0.05  # how often an open loop asks ``keep_going``
SWITCH_S = 0.0001  # the interpreter's switch interval while a load runs
REALTIME_PRIORITY = 1  # SCHED_FIFO priority of the sender and receiver threads: the lowest real-time one
BEHIND_S = 0.1  # a sender this far behind has lost the run anyway: it leaves real-time priority, not to hog a core
# Idle connections the receiver keeps open ahead of the sender: a connect is not a send, and on
# the send path it is exposed to rare stalls (at 1,000 QPS against a saturated server, with 4
# spare the sender opened ~150 connections in 5 s and one socket() took 17 ms: 1.2% late sends
# in that run; with 32 it opened none, 0.1%; load average 8-9, 2026-11-30, a scratch run).
SPARE = 32


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


def resolve(url: str) -> tuple[str, dict[str, Any]]:
    """The infer route and the model's v2 metadata from what a user has at hand: the server's
    root (``http://HOST:PORT``: the model the engines serve by default, ``model``), the model's
    URL (``.../v2/models/NAME``) or its infer route. Checked before any load is sent: a URL that
    is not a v2 model is one line naming it (a wrong route would only answer 404s)."""
    Target.of(url)  # plain http, with a host
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if path.endswith("/infer"):
        meta_url = root + path.removesuffix("/infer")
    elif path in ("", "/v2", "/v2/models"):
        meta_url = f"{root}/v2/models/{DEFAULT_MODEL}"
    elif path.startswith("/v2/models/") and path.count("/") == 3:
        meta_url = root + path
    else:
        raise LoadError(f"{url}: give the server's root (http://HOST:PORT), the model's URL "
                        "(.../v2/models/NAME) or its infer route (.../v2/models/NAME/infer)")
    try:
        with urllib.request.urlopen(meta_url, timeout=5) as r:
            meta = json.loads(r.read())
    except urllib.error.HTTPError as err:
        raise LoadError(f"{url}: {meta_url} answered {err.code}: no such v2 model there (give the model's URL, "
                        ".../v2/models/NAME)") from None
    except (OSError, ValueError) as err:
        raise LoadError(f"{url}: cannot read the model's metadata at {meta_url} ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("inputs"), list) or not meta["inputs"]:
        raise LoadError(f"{url}: {meta_url} is not a v2 model's metadata (no inputs)")
    return meta_url + "/infer", meta


def payloads_for(url: str, data: str | Path | None = None, seed: int = 0, binary: bool = False,
                 n_synthetic: int = 64, meta: dict[str, Any] | None = None) -> list[Payload]:
    """Payloads from a ``.npz`` (``x_eval``/``y_eval``), else random inputs of the model's shape
    read from its v2 metadata (``meta``, else ``GET`` the model's URL)."""
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
    meta = meta or resolve(url)[1]
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
    """Everything measured during one load run (times from ``time.perf_counter``).

    ``done_at`` is appended by one thread in time order, so windows are found by bisection
    (the server trial asks for them while the load runs)."""

    start: float = 0.0
    done_at: list[float] = field(default_factory=list)  # answered (200) requests
    latency_s: list[float] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    late: int = 0
    sent: int = 0
    priority: str = ""  # the sender's scheduling: "real-time (SCHED_FIFO)" or "normal (why)"
    fail_at: list[float] = field(default_factory=list)
    answers: dict[int, set[int]] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)
    raw: deque = field(default_factory=deque)  # (index, label, head, body) not decoded yet
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answered(self, now: float, sent_or_scheduled: float, status: int, index: int, label: int | None,
                 head: bytes, body: bytes, score: bool) -> None:
        with self.lock:  # one pair at a time: done_at[i] and latency_s[i] are the same request
            self.status[str(status)] += 1
            if status != 200:
                self.fail_at.append(now)
                return
            self.latency_s.append(now - sent_or_scheduled)
            self.done_at.append(now)
        if score and index >= 0:
            self.raw.append((index, label, head, body))

    def failed(self, now: float, what: str, n: int = 1) -> None:
        with self.lock:
            self.status[what] += n
        self.fail_at.extend([now] * n)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Answered requests that completed in [t0, t1): count and percentiles (ms)."""
        n = len(self.done_at)
        i0, i1 = bisect_left(self.done_at, t0, 0, n), bisect_left(self.done_at, t1, 0, n)
        lat = np.asarray(self.latency_s[i0:i1]) * 1e3
        fail = np.asarray(self.fail_at[:])
        out: dict[str, Any] = {"answered": int(lat.size), "failed": int(np.sum((fail >= t0) & (fail < t1)))}
        for p in PERCENTILES:
            out[f"p{p:g}_ms"] = float(np.percentile(lat, p)) if lat.size else float("nan")
        return out

    def answered_since(self, t: float) -> int:
        n = len(self.done_at)
        return n - bisect_left(self.done_at, t, 0, n)

    def accuracy(self) -> dict[str, Any]:
        """Decodes the answers received so far (off the send path), then scores them."""
        while self.raw:
            try:
                index, label, head, body = self.raw.popleft()
            except IndexError:  # another thread took the last one
                break
            self.answers.setdefault(index, set()).add(_top1(head, body))
            if label is not None:
                self.labels[index] = label
        scored = [i for i in list(self.answers) if i in self.labels]
        if not scored:
            return {}
        consistent = all(len(v) == 1 for v in list(self.answers.values()))
        right = sum(next(iter(self.answers[i])) == self.labels[i] for i in scored)
        return {"accuracy": 100.0 * right / len(scored), "samples_scored": len(scored),
                "answers_consistent": consistent}


def _top1(head: bytes, body: bytes) -> int:
    headers = dict(line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    out = protocol.response_array(body, headers.get("content-type", ""), headers)
    return int(np.argmax(out.reshape(-1)))


@dataclass(frozen=True)
class Target:
    """Where requests go, and each payload as the bytes of a whole HTTP/1.1 request."""

    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise LoadError(f"{url}: the load generator speaks plain http:// (give http://HOST:PORT/...)")
        return cls(parts.hostname, parts.port or 80, parts.path or "/")

    def request(self, p: Payload) -> bytes:
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {p.content_type}\r\nContent-Length: {len(p.body)}\r\n\r\n").encode() + p.body


class _Conn:
    """One keep-alive connection: its socket, unparsed bytes and the requests awaiting answers
    (FIFO: HTTP/1.1 answers in order)."""

    def __init__(self, target: Target, timeout: float):
        self.sock = socket.create_connection((target.host, target.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending: deque = deque()  # (t0, index, label)
        self.idle = False
        self.closed = False

    def responses(self) -> list[tuple[int, bytes, bytes]]:
        """Complete responses in the buffer: (status, head, body); ``closed`` after ``Connection: close``."""
        out = []
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(buf[:end])
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                n = int(lower[at + 17:stop if stop >= 0 else len(lower)])
                if len(buf) < end + 4 + n:
                    return out
                body = bytes(buf[end + 4:end + 4 + n])
                del buf[:end + 4 + n]
            elif b"\r\ntransfer-encoding: chunked" in lower:
                body, used = _dechunk(buf, end + 4)
                if body is None:
                    return out
                del buf[:used]
            else:  # no framing: the body runs to the end of the connection
                body = bytes(buf[end + 4:])
                del buf[:]
                self.closed = True
            if b"\r\nconnection: close" in lower:
                self.closed = True
            out.append((int(head[9:12]), head, body))

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _dechunk(buf: bytearray, at: int) -> tuple[bytes | None, int]:
    parts = []
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None, 0
        n = int(bytes(buf[at:eol]).split(b";")[0], 16)
        if len(buf) < eol + 2 + n + 2:
            return None, 0
        parts.append(bytes(buf[eol + 2:eol + 2 + n]))
        at = eol + 2 + n + 2
        if n == 0:
            return b"".join(parts), at


class _Client:
    """The sender's connections and the receiver thread that reads them all (epoll)."""

    def __init__(self, target: Target, rec: Recorder, max_connections: int, timeout: float, score: bool):
        self.target, self.rec, self.max, self.timeout, self.score = target, rec, max_connections, timeout, score
        self.conns: dict[int, _Conn] = {}
        self.idle: deque[_Conn] = deque()
        self.lock = threading.Lock()
        self.poll = select.epoll()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True, name="load-receiver")

    def __enter__(self) -> "_Client":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(self.timeout + 5)
        for conn in list(self.conns.values()):
            if conn.pending:
                self.rec.failed(time.perf_counter(), "Timeout", len(conn.pending))
                conn.pending.clear()
            conn.close()
        self.poll.close()

    def open(self) -> _Conn:
        conn = _Conn(self.target, self.timeout)
        with self.lock:
            self.conns[conn.sock.fileno()] = conn
        self.poll.register(conn.sock.fileno(), select.EPOLLIN)
        return conn

    def warm(self, n: int) -> None:
        """Open idle connections until ``n`` are idle (or ``max_connections`` are open)."""
        while len(self.idle) < n and len(self.conns) < self.max:
            try:
                conn = self.open()
            except OSError:
                return
            with self.lock:
                conn.idle = True
                self.idle.append(conn)

    def send(self, req: bytes, p: Payload, t0: float) -> float:
        """Send one pre-encoded request scheduled at ``t0`` (its latency counts from ``t0``);
        returns when it was handed to the socket (after choosing or opening a connection): the
        time its lateness is measured at."""
        with self.lock:
            conn = None
            while self.idle and conn is None:
                conn = self.idle.pop()
                conn = None if conn.closed else conn
            if conn is None and len(self.conns) >= self.max:
                conn = min(self.conns.values(), key=lambda c: len(c.pending))
            if conn is not None:
                conn.idle = False
                conn.pending.append((t0, p.index, p.label))
        try:
            if conn is None:
                conn = self.open()
                conn.pending.append((t0, p.index, p.label))
            sent_at = time.perf_counter()
            conn.sock.sendall(req)
        except OSError as err:
            sent_at = time.perf_counter()
            if conn is not None:
                self._drop(conn, type(err).__name__)
            else:
                self.rec.failed(sent_at, type(err).__name__)
        return sent_at

    def busy(self) -> bool:
        return any(c.pending for c in list(self.conns.values()))

    def drain(self, timeout: float) -> None:
        end = time.perf_counter() + timeout
        while self.busy() and time.perf_counter() < end:
            time.sleep(0.005)

    def _drop(self, conn: _Conn, why: str) -> None:
        with self.lock:
            conn.closed = True
            if self.conns.get(conn.sock.fileno()) is conn:
                del self.conns[conn.sock.fileno()]
                try:
                    self.poll.unregister(conn.sock.fileno())
                except (OSError, ValueError):
                    pass
            n = len(conn.pending)
            conn.pending.clear()
        if n:
            self.rec.failed(time.perf_counter(), why, n)
        conn.close()

    def _receive(self) -> None:
        rec, score = self.rec, self.score
        last_check = time.perf_counter()
        while not self.stop.is_set():
            events = self.poll.poll(0.02)
            now = time.perf_counter()
            for fd, _ in events:
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                try:
                    data = conn.sock.recv(1 << 18)
                except OSError as err:
                    self._drop(conn, type(err).__name__)
                    continue
                if not data:
                    self._drop(conn, "ConnectionClosed")
                    continue
                conn.buf += data
                for status, head, body in conn.responses():
                    t0, index, label = conn.pending.popleft()
                    rec.answered(now, t0, status, index, label, head, body, score)
                if conn.closed:
                    self._drop(conn, "ConnectionClosed")
                    continue
                with self.lock:
                    if not conn.pending and not conn.idle:
                        conn.idle = True
                        self.idle.append(conn)
            if len(self.idle) < SPARE:
                self.warm(SPARE)
            if now - last_check > 0.1:  # requests older than the time-out fail with their connection
                last_check = now
                for conn in list(self.conns.values()):
                    if conn.pending and now - conn.pending[0][0] > self.timeout:
                        self._drop(conn, "Timeout")


class _Quiet:
    """While a load runs: a short switch interval and no garbage collection (restored after)."""

    def __enter__(self) -> None:
        self.switch, self.gc = sys.getswitchinterval(), gc.isenabled()
        sys.setswitchinterval(SWITCH_S)
        gc.disable()

    def __exit__(self, *exc) -> None:
        sys.setswitchinterval(self.switch)
        if self.gc:
            gc.enable()


class Realtime:
    """The calling thread, and the threads it starts meanwhile (they inherit it), at
    ``SCHED_FIFO`` priority ``REALTIME_PRIORITY`` when the process may; restored afterwards
    (or earlier by :meth:`leave`). ``got`` says which it was, and why not (the module docstring
    says why at all)."""

    def __enter__(self) -> "Realtime":
        self.before, self.got = None, "real-time (SCHED_FIFO)"
        if not hasattr(os, "sched_setscheduler"):
            self.got = "normal (no real-time scheduling on this platform)"
            return self
        try:
            before = (os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        except OSError as err:  # PermissionError without root or CAP_SYS_NICE
            self.got = f"normal (real-time refused: {err.strerror or err})"
            return self
        self.before = before
        return self

    def leave(self, why: str) -> None:
        """Back to the calling thread's own scheduling now (threads started meanwhile keep theirs)."""
        if self.before is not None:
            os.sched_setscheduler(0, self.before[0], self.before[1])
            self.before = None
            self.got += f", then normal ({why})"

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            os.sched_setscheduler(0, self.before[0], self.before[1])


def wait_until(t: float) -> None:
    """Until ``perf_counter`` reaches ``t``: a sleep (which wakes late by the kernel's timer slack
    and scheduling), then a spin of at most ``SPIN_S`` to land on it."""
    delay = t - time.perf_counter()
    if delay > SPIN_S:
        time.sleep(delay - SPIN_S)
    while time.perf_counter() < t:
        pass


def arrivals(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    """Offsets (s) of a Poisson process of ``rate`` within ``duration``, drawn before the run."""
    rng = np.random.default_rng(seed)
    n = int(rate * duration + 10 * np.sqrt(rate * duration) + 10)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] <= duration:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t <= duration]


def open_loop(url: str, items: list[Payload], rate: float, duration: float, seed: int = 0,
              rec: Recorder | None = None, timeout: float = 30.0, max_connections: int = 256,
              score: bool = True, keep_going: Callable[[float], bool] | None = None) -> Recorder:
    """Poisson arrivals at ``rate`` for ``duration`` s (``keep_going(now)``, asked every
    ``CHECK_S``, may stop it earlier)."""
    rec = rec or Recorder()
    target = Target.of(url)
    reqs = [target.request(p) for p in items]
    offsets = arrivals(rate, duration, seed)
    with _Quiet(), Realtime() as rt, _Client(target, rec, max_connections, timeout, score) as client:
        rec.priority = rt.got
        client.warm(2 * SPARE)
        rec.start = start = time.perf_counter()
        next_check = start + CHECK_S
        for i, offset in enumerate(offsets.tolist()):
            t = start + offset
            if keep_going is not None and time.perf_counter() >= next_check:
                if not keep_going(time.perf_counter()):
                    break
                next_check = time.perf_counter() + CHECK_S
            wait_until(t)
            sent_at = client.send(reqs[i % len(reqs)], items[i % len(items)], t)
            rec.sent += 1
            if sent_at - t > LATE_MS / 1e3:
                rec.late += 1
                if sent_at - t > BEHIND_S and rt.before is not None:
                    rt.leave(f"{BEHIND_S * 1e3:g} ms behind its schedule")
                    rec.priority = rt.got
        client.drain(timeout)
    return rec


def closed_loop(url: str, items: list[Payload], concurrency: int, requests: int,
                timeout: float = 30.0, score: bool = True) -> Recorder:
    """``concurrency`` client threads, ``requests`` requests in all, each sent when its client is free."""
    rec = Recorder()
    target = Target.of(url)
    reqs = [target.request(p) for p in items]
    counter = iter(range(requests))
    take = threading.Lock()

    def client() -> None:
        conn = None
        while True:
            with take:
                i = next(counter, None)
            if i is None:
                break
            p = items[i % len(items)]
            t0 = time.perf_counter()
            try:
                conn = conn if conn is not None and not conn.closed else _Conn(target, timeout)
                conn.sock.sendall(reqs[i % len(reqs)])
                got: list = []
                while not got:
                    data = conn.sock.recv(1 << 18)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    conn.buf += data
                    got = conn.responses()
            except OSError as err:
                rec.failed(time.perf_counter(), type(err).__name__)
                if conn is not None:
                    conn.close()
                continue
            status, head, body = got[0]
            rec.answered(time.perf_counter(), t0, status, p.index, p.label, head, body, score)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True, name=f"load-client-{k}") for k in range(concurrency)]
    rec.start = time.perf_counter()
    with _Quiet():
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return rec


def invalid_reasons(late_fraction: float | None, client_cpu: float, error_fraction: float) -> list[str]:
    """Why a load run does not describe the server (empty: it does). ``late_fraction`` None: a
    closed loop, which has no schedule to be late for."""
    reasons = []
    if late_fraction is not None and late_fraction > MAX_LATE_FRACTION:
        reasons.append(f"{late_fraction:.1%} of sends were more than {LATE_MS:g} ms late")
    if client_cpu > MAX_CLIENT_CPU:
        reasons.append(f"load generator CPU {client_cpu:.0%} of a core")
    if error_fraction > MAX_ERROR_FRACTION:
        reasons.append(f"{error_fraction:.1%} of requests failed")
    return reasons


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
    if offered is not None:
        out["sender_priority"] = rec.priority
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = hist.get_value_at_percentile(p) / 1e3 if answered else float("nan")
    out["mean_ms"] = hist.get_mean_value() / 1e3 if answered else float("nan")
    reasons = invalid_reasons(out["late_fraction"] if offered is not None else None, cpu, out["error_fraction"])
    out["valid"] = not reasons
    out["invalid_reasons"] = reasons
    out.update(rec.accuracy())
    return out


def run(url: str, rate: float | None = None, duration: float | None = None, concurrency: int | None = None,
        requests: int | None = None, data: str | Path | None = None, seed: int = 0, binary: bool = False,
        items: list[Payload] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """One load run, open loop (``rate`` + ``duration``) or closed loop (``concurrency`` + ``requests``).
    Without ``items``, ``url`` may be the server's root or the model's URL (:func:`resolve`)."""
    if (rate is None) == (concurrency is None):
        raise LoadError("give either --rate QPS --duration S (open loop) or --concurrency N --requests M")
    if rate is not None and (rate <= 0 or not duration or duration <= 0):
        raise LoadError(f"--rate {rate} --duration {duration}: both must be positive")
    if concurrency is not None and (concurrency < 1 or not requests or requests < 1):
        raise LoadError(f"--concurrency {concurrency} --requests {requests}: both must be at least 1")
    if not items:
        url, meta = resolve(url)
        items = payloads_for(url, data, seed, binary, meta=meta)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if rate is not None:
        rec = open_loop(url, items, rate, duration, seed, timeout=timeout)
    else:
        rec = closed_loop(url, items, concurrency, requests, timeout=timeout)
    elapsed = time.perf_counter() - t0
    cpu = (time.process_time() - cpu0) / elapsed
    out = summarize(rec, elapsed, cpu, rate)
    out["mode"] = "open" if rate is not None else "closed"
    out["url"] = url
    if concurrency is not None:
        out["concurrency"] = concurrency
    return out


def render(r: dict[str, Any]) -> str:
    """The human summary ``workbench load`` prints."""
    head = (f"offered {r['offered_qps']:g} QPS (open loop), " if r["mode"] == "open"
            else f"closed loop, {r['concurrency']} clients, ")
    lines = [f"target: {r['url']}"] if "url" in r else []
    lines += [head + f"achieved {r['achieved_qps']:.1f} QPS over {r['seconds']:.2f} s, "
              f"{r['answered']}/{r['requests']} answered",
              "latency ms: " + ", ".join(f"p{p:g} {r[f'p{p:g}_ms']:.3f}" for p in PERCENTILES)
              + f", mean {r['mean_ms']:.3f}",
              "errors: " + (", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"),
              f"late sends (> {LATE_MS:g} ms): {r['late_sends']} ({r['late_fraction']:.2%})"
              + (f", sender {r['sender_priority']}" if r.get("sender_priority") else "")
              + f"; client CPU {r['client_cpu']:.0%}"]
    if "accuracy" in r:
        lines.append(f"accuracy of the answers: {r['accuracy']:.2f}% on {r['samples_scored']} samples"
                     f"{'' if r['answers_consistent'] else ' (answers to the same sample differed!)'}")
    lines.append("result: valid" if r["valid"] else "result: INVALID - " + "; ".join(r["invalid_reasons"]))
    return "\n".join(lines)
