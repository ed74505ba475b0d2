"""The load generator against the builtin server on loopback (bounded in time and count)."""

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_serve import bundle, group_gone, session, start  # noqa: F401 - shared fixtures

from workbench.serve import load


@pytest.fixture(scope="module")
def slow_server(bundle, tmp_path_factory):  # noqa: F811
    """Every lone request waits out a 50 ms batching delay: latencies have a known floor."""
    eng = start(bundle, tmp_path_factory.mktemp("slow"), max_batch_size=64, max_queue_delay_ms=50)
    yield eng
    eng.stop()


@pytest.fixture
def npz(tmp_path, digits):
    path = tmp_path / "eval.npz"
    np.savez(path, x_eval=digits.x_eval[:40], y_eval=digits.y_eval[:40])
    return path


def test_open_loop_counts_scores_and_measures_from_the_schedule(slow_server, npz, session, digits):  # noqa: F811
    r = load.run(slow_server.infer_url, rate=40, duration=2.0, data=npz, seed=1)
    assert r["mode"] == "open" and r["requests"] == r["answered"] > 0 and r["errors"] == {}
    # Poisson arrivals: the count is random but seeded; 80 expected, far outside [30, 160] is a bug
    assert 30 <= r["requests"] <= 160
    # the first request of every batch waits out the 50 ms delay (a batch of 64 never fills here)
    assert r["p99.9_ms"] >= 50.0
    assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p99.9_ms"]
    offline = session.run(np.ascontiguousarray(digits.x_eval[:40])).argmax(-1)
    n = r["samples_scored"]
    assert r["answers_consistent"]
    assert r["accuracy"] == pytest.approx(100.0 * np.mean(offline[:n] == digits.y_eval[:n]))
    assert isinstance(r["valid"], bool) and "late_fraction" in r and "client_cpu" in r
    assert r["sender_priority"].startswith(("real-time", "normal ("))


def test_closed_loop_and_errors_by_status(slow_server, npz):
    r = load.run(slow_server.infer_url, concurrency=8, requests=40, data=npz)
    assert r["mode"] == "closed" and r["answered"] == 40
    wrong = slow_server.infer_url.replace("/model/", "/nope/")
    with pytest.raises(load.LoadError, match="answered 404"):  # refused before any load is sent
        load.run(wrong, concurrency=2, requests=6, data=npz)
    items = load.payloads_for(wrong, data=npz)  # given payloads: the URL is taken as it is
    r = load.run(wrong, concurrency=2, requests=6, items=items)
    assert r["answered"] == 0 and r["errors"] == {"404": 6} and r["error_fraction"] == 1.0
    assert not r["valid"] and r["invalid_reasons"] == ["100.0% of requests failed"]
    r = load.run(wrong, rate=20, duration=0.5, items=items)  # fast 404s are not a valid open loop either
    assert r["answered"] == 0 and set(r["errors"]) == {"404"} and "100.0% of requests failed" in r["invalid_reasons"]


def test_synthetic_payloads_from_the_model_metadata(slow_server):
    items = load.payloads_for(slow_server.infer_url, seed=3)
    assert items and all(p.index == -1 for p in items)
    r = load.run(slow_server.infer_url, concurrency=4, requests=8, items=items)
    assert r["answered"] == 8 and "accuracy" not in r


def test_bad_arguments_are_one_line_errors(slow_server, tmp_path):
    for kwargs in ({}, {"rate": 10, "concurrency": 2}, {"rate": -1, "duration": 1}, {"concurrency": 0, "requests": 1}):
        with pytest.raises(load.LoadError):
            load.run(slow_server.infer_url, **kwargs)
    with pytest.raises(load.LoadError):
        load.payloads_for(slow_server.infer_url, data=tmp_path / "missing.npz")


def test_percentile_bound():
    from workbench.trial.server import min_requests

    assert min_requests(99.0) == 459
    assert min_requests(90.0) < min_requests(99.0) < min_requests(99.9)


def test_cli_serve_and_load(bundle, npz, tmp_path):  # noqa: F811
    """`workbench serve` in the foreground, `workbench load --json` against it, SIGTERM stops it."""
    import signal
    import subprocess

    from workbench.serve import free_port

    exe = str(Path(sys.executable).parent / "workbench")
    port = free_port()
    proc = subprocess.Popen([exe, "serve", str(bundle), "--port", str(port), "--max-batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() is not None else line
        url = f"http://127.0.0.1:{port}/v2/models/model/infer"
        out = subprocess.run([exe, "load", url, "--concurrency", "4", "--requests", "20", "--data", str(npz),
                              "--json"], capture_output=True, text=True, timeout=120)
        result = json.loads(out.stdout)
        assert result["answered"] == 20, out.stderr
        # the server's root URL finds the model and its input from the metadata
        out = subprocess.run([exe, "load", f"http://127.0.0.1:{port}", "--concurrency", "2", "--requests", "6",
                              "--json"], capture_output=True, text=True, timeout=120)
        result = json.loads(out.stdout)
        assert out.returncode == 0 and result["answered"] == 6 and result["url"] == url, out.stderr
        # every request refused (the data does not fit the model): exit 1, and why on stderr also with --json
        wrong = tmp_path / "wrong.npz"
        np.savez(wrong, x_eval=np.zeros((4, 3), np.float32))
        out = subprocess.run([exe, "load", url, "--concurrency", "2", "--requests", "6", "--data", str(wrong),
                              "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and json.loads(out.stdout)["errors"] == {"400": 6}
        assert out.stderr.strip() == "workbench load: INVALID run - 100.0% of requests failed"
        out = subprocess.run([exe, "load", url, "--rate", "20", "--duration", "0.5", "--binary"],
                             capture_output=True, text=True, timeout=120)
        assert "QPS" in out.stdout and "latency ms" in out.stdout, out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert group_gone(proc.pid)
    bad = subprocess.run([exe, "serve", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    bad = subprocess.run([exe, "load", "http://127.0.0.1:9/x/infer", "--rate", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    help_text = subprocess.run([exe, "load", "--help"], capture_output=True, text=True).stdout
    assert all(f"{code} " in help_text for code in (0, 1, 2)) and "exit codes" in help_text


def test_the_url_may_be_the_root_the_model_or_its_infer_route(slow_server):
    root = slow_server.url
    infer = slow_server.infer_url
    for url in (root, root + "/", infer.removesuffix("/infer"), infer.removesuffix("/infer") + "/", infer):
        got, meta = load.resolve(url)
        assert got == infer and meta["name"] == "model" and meta["inputs"]
    with pytest.raises(load.LoadError, match="answered 404: no such v2 model"):
        load.resolve(root + "/v2/models/nope")
    with pytest.raises(load.LoadError, match="give the server's root"):
        load.resolve(root + "/metrics")
    with pytest.raises(load.LoadError, match="plain http://"):
        load.resolve("https://127.0.0.1:1/v2/models/model")


def test_runs_where_an_event_loop_is_already_running(slow_server):
    """As in a notebook kernel (papermill runs the server trial there)."""
    import asyncio

    async def inside():
        return load.run(slow_server.infer_url, concurrency=2, requests=4)

    assert asyncio.run(inside())["answered"] == 4


def test_a_stalled_sender_counts_every_late_send_and_charges_its_latency(slow_server, npz):  # noqa: F811
    """The schedule is fixed before the run: when the sender is held up (here ``keep_going``
    blocks it for 0.2 s), every arrival due meanwhile is sent late, counted late, and its latency
    runs from its scheduled time (no coordinated omission)."""
    import time

    stall, called = 0.2, []

    def keep_going(now):
        if not called:
            called.append(now)
            time.sleep(stall)
        return True

    rate, duration, seed = 200.0, 0.6, 5
    items = load.payloads_for(slow_server.infer_url, data=npz)
    rec = load.open_loop(slow_server.infer_url, items, rate, duration, seed=seed, keep_going=keep_going)
    at = called[0] - rec.start
    offsets = load.arrivals(rate, duration, seed)
    due = int(((offsets > at) & (offsets < at + stall - 2 * load.LATE_MS / 1e3)).sum())
    assert due > 10 and rec.sent == len(offsets) and rec.late >= due
    # the first arrival due in the stall waited for its end before it was even sent
    assert max(rec.latency_s) >= stall - (offsets[offsets > at][0] - at)
    # a sender 0.2 s behind leaves real-time priority (where it had it) for the rest of the run
    assert rec.priority.startswith("normal (") or rec.priority.endswith(", then normal (100 ms behind its schedule)")
    r = load.summarize(rec, duration, 0.05, rate)
    assert not r["valid"] and r["late_sends"] == rec.late
    assert r["invalid_reasons"] == [f"{rec.late / rec.sent:.1%} of sends were more than 1 ms late"]


def test_validity_rules():
    assert load.invalid_reasons(0.0, 0.1, 0.0) == []
    assert load.invalid_reasons(load.MAX_LATE_FRACTION, load.MAX_CLIENT_CPU, load.MAX_ERROR_FRACTION) == []
    assert load.invalid_reasons(None, 0.1, 0.0) == []  # a closed loop has no schedule to be late for
    late, cpu, errors = load.invalid_reasons(0.02, 0.9, 0.5)
    assert "2.0% of sends" in late and "CPU 90%" in cpu and "50.0% of requests failed" in errors


def test_the_schedule_is_drawn_up_front_and_does_not_drift():
    a = load.arrivals(1000.0, 2.0, seed=7)
    assert np.array_equal(a, load.arrivals(1000.0, 2.0, seed=7)) and np.all(np.diff(a) > 0) and a[-1] <= 2.0
    # a Poisson process of 1,000/s over 2 s: 2,000 +- 5 sigma (sigma ~ 45)
    assert abs(len(a) - 2000) < 5 * np.sqrt(2000)


def _policies() -> tuple[str, int, int]:
    """What ``Realtime`` gave, the calling thread's policy inside, a thread started inside's."""
    seen = []
    with load.Realtime() as rt:
        th = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        th.start()
        th.join()
        inside = os.sched_getscheduler(0)
    return rt.got, inside, seen[0]


def test_the_sender_runs_real_time_when_allowed_and_is_restored():
    """The sender and the receiver it starts run SCHED_FIFO while the load runs when the process
    may; the calling thread (a notebook kernel's) gets its own scheduling back afterwards."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    got, inside, started = _policies()
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    if got.startswith("real-time"):
        assert inside == started == os.SCHED_FIFO
    else:
        assert got.startswith("normal (") and inside == started == before[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the privilege needs root to begin with")
def test_without_the_privilege_the_sender_runs_normal_and_says_why():
    """A process that may not (here: a child that gave up root) keeps normal scheduling, and
    says why, instead of failing the load run."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on, only os._exit
        try:
            os.setresuid(65534, 65534, 65534)
            os.write(write, json.dumps(_policies()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got, inside, started = json.loads(f.read())
    os.waitpid(pid, 0)
    assert got.startswith("normal (real-time refused") and inside == started == os.SCHED_OTHER
