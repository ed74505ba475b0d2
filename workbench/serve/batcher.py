"""The dynamic batcher of the builtin engine: requests queue, batches leave for free instances.

A batch leaves when it is full (``max_batch_size`` rows) or when its *first* request has waited
``max_queue_delay_ms`` (policy ``delay``), as soon as an instance is free. Policy ``idle``
dispatches whatever is queued the moment an instance is free, so a lone request never waits for
company: at low load it costs nothing, under load batches form by themselves while instances are
busy. A full queue refuses new requests (:class:`QueueFull`, answered 503) rather than letting
latency grow without bound.

Dispatch is a callback scheduled on the event loop (``call_soon``), not a task waiting on an
event: the requests whose handlers run in the same turn of the loop all join the queue first, and
waking a dispatcher task cost more than the model on a tiny one. On the only instance, a thread
instance, a batch runs inline, on the event loop's thread, as a hand-written endpoint does, when
its rows at the model's recent compute time per row take less than ``INLINE_MAX_S``; a lone
request runs at once, without queueing, when the batch can only be that request
(``max_batch_size`` 1, or policy ``idle`` and no other request in the server: ``ahead``, counted
by :mod:`workbench.serve.guard`).
Handing a batch to the instance's thread and back costs the event loop more than a small model's
compute: at batch 1, ``ThreadPoolExecutor.submit`` alone took 9.5% of the loop's samples, then the
GIL hand-back (py-spy); batches of 8 on digits_cnn used more server CPU per request through the
thread than one at a time inline (benchmarks/serving.md). Slower models' batches, several
instances and process instances go to the instance's worker, where the model computes while the
event loop reads and parses the next requests.

Each request's answer is its own rows of the batch output: runtimes compute rows independently,
so it is exactly the unbatched answer (tests/test_serve.py checks this under concurrent load, and
that the inline path answers bit for bit as a batch does).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import multiprocessing
import threading
import time
from typing import Callable

import numpy as np

from workbench.data import inputs
from workbench.export.bundle import open_bundle

POLICIES = ("delay", "idle")
# A batch runs on the event loop only while its rows, at the model's smoothed compute time per row
# of the recent batches, take less than this: a hand-written endpoint does the same for a tiny
# model, but a slower one would hold the loop (health probes, reading and parsing the next
# requests) for its whole compute, where the thread hop (~0.1 ms) is noise against it.
INLINE_MAX_S = 0.002
_SMOOTH = 0.1  # weight of the newest batch's compute time per row in the running estimate


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class _Item:
    __slots__ = ("x", "future", "enqueued")

    def __init__(self, x, future: asyncio.Future) -> None:
        self.x, self.future, self.enqueued = x, future, time.perf_counter()


class Instance:
    """One model instance: a session driven by its own worker (a thread, or a process when the
    runtime holds the GIL while it computes). ``inline``: ``run`` may also be called on the event
    loop's thread (a session in this process), which a lone request does."""

    def __init__(self, executor: concurrent.futures.Executor, run: Callable[[np.ndarray], np.ndarray],
                 inline: bool = False):
        self.executor, self.run, self.inline = executor, run, inline

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, batch)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


_PROCESS_SESSION = None


def _process_init(bundle_path: str, threads: int | None, trust_model_code: bool) -> None:
    global _PROCESS_SESSION

    _PROCESS_SESSION = open_bundle(bundle_path, trust_model_code).session(threads)


def _process_run(batch: np.ndarray) -> np.ndarray:
    return np.asarray(_PROCESS_SESSION.run(batch))


def thread_instance(session) -> Instance:
    return Instance(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="instance"),
                    lambda b: np.asarray(session.run(b)), inline=True)


def process_instance(bundle_path: str, threads: int | None, trust_model_code: bool = False) -> Instance:
    ex = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_process_init,
                                                initargs=(bundle_path, threads, trust_model_code))
    return Instance(ex, _process_run)


def releases_gil(run: Callable[[], object], seconds: float = 0.2, tries: int = 3) -> bool:
    """Whether ``run`` lets other Python threads go on while it computes.

    A Python counting loop runs alone, then beside a thread calling ``run`` back to back: if the
    counter keeps at least half its pace, the runtime released the GIL (onnxruntime, OpenVINO and
    LiteRT do; a runtime that does not would serialise K thread instances into one). Other
    processes competing for the cores can only slow the counter down, never speed it up, so the
    best of ``tries`` rounds is taken: a busy machine does not pass for a GIL held.
    """
    def count(stop: threading.Event) -> int:
        n = 0
        while not stop.is_set():
            n += 1
        return n

    def paced(busy: bool) -> float:
        stop = threading.Event()
        worker = None
        if busy:
            def loop():
                while not stop.is_set():
                    run()
            worker = threading.Thread(target=loop, daemon=True)
            worker.start()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        t0 = time.perf_counter()
        n = count(stop)
        rate = n / (time.perf_counter() - t0)
        if worker:
            worker.join()
        return rate

    run()
    for _ in range(tries):
        alone = paced(False)
        if paced(True) >= 0.5 * alone:
            return True
    return False


def _concat(xs: list):
    """One batch of several requests' rows (arrays, or dicts of arrays by input name)."""
    if len(xs) == 1:
        return xs[0]
    if isinstance(xs[0], dict):
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate(xs)


class Batcher:
    """Queue + dispatcher. ``await submit(x)`` returns the model's outputs for rows ``x``."""
    def __init__(self, instances: list[Instance], max_batch_size: int = 8, max_queue_delay_ms: float = 2.0,
                 policy: str = "delay", max_queue: int = 256, observe: Callable[..., None] | None = None):
        if policy not in POLICIES:
            raise ValueError(f"batch_policy must be one of {POLICIES} (got {policy!r})")
        self.instances = instances
        self.max_batch_size, self.delay = max(1, max_batch_size), max_queue_delay_ms / 1e3
        self.policy, self.max_queue = policy, max_queue
        self.observe = observe or (lambda **_: None)
        self.queue: collections.deque[_Item] = collections.deque()
        self.running = 0  # requests inside a dispatched batch
        self._free = list(instances)
        self._inline = len(instances) == 1 and instances[0].inline
        self._row_s = 0.0  # smoothed compute time per row of the recent batches (INLINE_MAX_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._batches: set[asyncio.Task] = set()

    @property
    def pending(self) -> int:
        return len(self.queue) + self.running

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Finish dispatched batches, then stop (the server drains requests before calling this)."""
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        if self._timer:
            self._timer.cancel()
        for inst in self.instances:
            inst.close()

    async def submit(self, x, ahead: int = 0) -> np.ndarray:
        """The outputs for rows ``x``. ``ahead``: requests the server received before this one and
        has not answered (on the inline path they wait in the event loop, not in the queue)."""
        if len(self.queue) >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} requests waiting)")
        if self._inline_now(inputs.rows(x)) and self._free and not self.queue and (
                self.max_batch_size == 1 or (self.policy == "idle" and ahead == 0)):
            # the batch is this request whatever comes next (batch 1), or nobody else is here
            if ahead > self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} requests waiting)")
            return self._compute_here(x)
        item = _Item(x, self._loop.create_future())
        self.queue.append(item)
        if not self._scheduled and self._free:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
        return await item.future

    def _inline_now(self, rows: int) -> bool:
        """Whether a batch of ``rows`` runs on the event loop (see ``INLINE_MAX_S``)."""
        return self._inline and rows * self._row_s < INLINE_MAX_S

    def _computed(self, seconds: float, rows: int) -> None:
        self._row_s += _SMOOTH * (seconds / rows - self._row_s)

    def _compute_here(self, x, queued: list[float] | tuple[float, ...] = (0.0,)) -> np.ndarray:
        """The outputs of rows ``x`` computed on the event loop's thread; ``queued``: each of its
        requests' time in the queue."""
        inst = self._free.pop()
        self.running += len(queued)
        start = time.perf_counter()
        try:
            y = inst.run(x)
        finally:
            self.running -= len(queued)
            self._free.append(inst)
        compute = time.perf_counter() - start
        rows = inputs.rows(x)
        self._computed(compute, rows)
        self.observe(batch_rows=rows, compute=compute, queued=queued)
        return y

    def _rows(self) -> int:
        return sum(inputs.rows(i.x) for i in self.queue)

    def _dispatch(self) -> None:
        """Send what is queued to the free instances (called on the loop, never awaited)."""
        self._scheduled = False
        while self._free:
            while self.queue and self.queue[0].future.done():  # its client went away
                self.queue.popleft()
            if not self.queue:
                return
            if self.policy == "delay" and self._rows() < self.max_batch_size:
                left = self.queue[0].enqueued + self.delay - time.perf_counter()
                if left > 0:
                    if self._timer:
                        self._timer.cancel()
                    self._timer = self._loop.call_later(left, self._dispatch)
                    return
            items, rows = [], 0
            while self.queue and (not items or rows + inputs.rows(self.queue[0].x) <= self.max_batch_size):
                item = self.queue.popleft()
                if not item.future.done():
                    items.append(item)
                    rows += inputs.rows(item.x)
            if not items:
                continue
            if self._inline_now(rows):
                self._batch_here(items)
                if self.queue and not self._scheduled:  # the next batch after the loop's I/O
                    self._scheduled = True
                    self._loop.call_soon(self._dispatch)
                return
            inst = self._free.pop()
            self.running += len(items)
            task = self._loop.create_task(self._run(inst, items, rows))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _batch_here(self, items: list[_Item]) -> None:
        """A batch the model computes within ``INLINE_MAX_S``, on the event loop's thread: handing
        it to the instance's thread and back cost the loop more than the batch's compute
        (benchmarks/serving.md)."""
        start = time.perf_counter()
        try:
            y = self._compute_here(_concat([i.x for i in items]), [start - i.enqueued for i in items])
        except Exception as err:  # noqa: BLE001 - every waiting request gets the error
            self._fail(items, err)
        else:
            self._deliver(items, y)

    def _deliver(self, items: list[_Item], y: np.ndarray) -> None:
        """Each request's own rows of the batch's outputs."""
        at = 0
        for item in items:
            n = inputs.rows(item.x)
            if not item.future.done():
                item.future.set_result(y[at:at + n] if len(items) > 1 else y)
            at += n

    @staticmethod
    def _fail(items: list[_Item], err: Exception) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(err)

    async def _run(self, inst: Instance, items: list[_Item], rows: int) -> None:
        start = time.perf_counter()
        try:
            y = await inst(_concat([i.x for i in items]))
            end = time.perf_counter()
            self._computed(end - start, rows)  # a slow model's batches stay off the loop; a fast one's come back
            self._deliver(items, y)
            self.observe(batch_rows=rows, compute=end - start, queued=[start - i.enqueued for i in items])
        except Exception as err:  # noqa: BLE001 - every waiting request gets the error
            self._fail(items, err)
        finally:
            self.running -= len(items)
            self._free.append(inst)
            self._dispatch()
