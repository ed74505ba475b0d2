"""Faults on loopback: overload at 3x capacity, and the server trial end to end (bounded)."""

import csv
import time

import psutil
import pytest
from test_serve import bundle, post, start  # noqa: F401 - shared fixtures

from workbench.measure.monitor import COLUMNS, Monitor
from workbench.serve import load, protocol


def test_overload_at_three_times_capacity_sheds_and_recovers(bundle, tmp_path, digits):  # noqa: F811
    max_queue = 16
    eng = start(bundle, tmp_path, max_batch_size=4, max_queue_delay_ms=1, max_queue=max_queue)
    try:
        items = load.payloads(digits.x_eval, digits.y_eval)
        cap = load.run(eng.infer_url, concurrency=16, requests=400, items=items)["achieved_qps"]
        with Monitor(tmp_path / "monitor.csv", eng.proc.pid, eng.metrics, period=0.25) as mon:
            r = load.run(eng.infer_url, rate=3 * cap, duration=3.0, items=items)
        assert eng.proc.poll() is None  # still up
        assert r["errors"].get("503", 0) > 0 and set(r["errors"]) == {"503"}  # shed, nothing else failed
        assert r["answered"] > 0 and r["answers_consistent"]
        depths = [row["queue_depth"] for row in mon.rows if row["queue_depth"] != ""]
        assert depths and max(depths) <= max_queue  # the queue - so the wait - stays bounded
        assert post(eng.infer_url, protocol.request_json(digits.x_eval[:1]))[0] == 200  # recovered
        after = load.run(eng.infer_url, rate=cap / 4, duration=1.0, items=items)
        assert after["answered"] >= 0.9 * after["requests"]  # (a busy shared machine may still shed a few)
    finally:
        eng.stop()


def _servers():
    return [p for p in psutil.Process().children(recursive=True)
            if "workbench.serve.app" in " ".join(p.cmdline())]


def test_server_trial_end_to_end(tmp_path):
    from workbench.trial.server import run_server_trial

    m = run_server_trial({"model": "digits_cnn", "data": "digits", "min_seconds": 0.25, "max_seconds": 1.5,
                          "slo_ms": 200.0, "max_batch_size": 4, "batch_policy": "idle"}, out_dir=tmp_path,
                         log=lambda *_: None)
    assert m["status"] == "complete" and m["slo_met"] and m["max_qps_at_slo"] > 0
    assert m["latency_p50_ms"] <= m["latency_p99_ms"] <= 200.0
    assert m["accuracy_under_load_matches_offline"] and m["answers_consistent"]
    assert m["mean_batch_size"] >= 1 and m["peak_rss_mb"] > 0 and m["points"]
    assert all(pt["passed"] == (pt["slo_value_ms"] <= 200.0 and pt["error_fraction"] < 0.001) for pt in m["points"])
    # whether the load run the result rests on was valid, and why not, is recorded with the result
    from workbench.serve import load

    assert all(pt["invalid_reasons"] == load.invalid_reasons(pt["late_fraction"], pt["client_cpu"],
                                                             pt["error_fraction"]) for pt in m["points"])
    best = max((pt for pt in m["points"] if pt["passed"]), key=lambda pt: pt["offered_qps"])
    assert m["load_valid"] == (not best["invalid_reasons"]) and m["load_invalid_reason"] == "; ".join(best["invalid_reasons"])
    rows = list(csv.DictReader(open(tmp_path / "monitor.csv")))
    assert rows and tuple(rows[0]) == COLUMNS
    assert (tmp_path / "server.log").exists()
    assert not _servers()  # stopped


def test_server_trial_stops_the_server_on_failure(tmp_path):
    from workbench.trial.server import run_server_trial

    with pytest.raises(Exception):
        run_server_trial({"model": "digits_cnn", "data": "digits", "min_seconds": 0.25, "max_seconds": 1.0,
                          "slo_ms": 50.0}, out_dir=tmp_path / "x", log=_raise)
    time.sleep(0.2)
    assert not _servers()


def _raise(*_):
    raise RuntimeError("the caller failed mid-search")


def test_unavailable_engine_prunes_the_trial(tmp_path, monkeypatch):
    from workbench.trial.server import run_server_trial

    monkeypatch.setenv("WORKBENCH_KSERVE_PYTHON", str(tmp_path / "no-such-python"))
    m = run_server_trial({"model": "digits_cnn", "data": "digits", "serving_engine": "kserve"}, out_dir=tmp_path)
    assert m["status"] == "pruned" and "kserve" in m["reason"] and "no-such-python" in m["reason"]


def test_server_figures(tmp_path):
    """The report's server figures draw from what server trials record, and from nothing."""
    from workbench.report import serving_plots

    pts = [{"offered_qps": q, "achieved_qps": q * 0.98, "answered": 100, "slo_value_ms": 1 + q / 100,
            "p99_ms": 1 + q / 100} for q in (50.0, 100.0, 200.0)]
    trials = {"builtin mb8": {"points": pts, "params": {"slo_ms": 3.0}}, "empty": {"points": []}}
    (tmp_path / "monitor.csv").write_text(",".join(COLUMNS) + "\n1.0,50,20.5,90,0,0,1.5,49,2.1,98.0\n"
                                          "2.0,50,21.0,90,1,1,,50,,98.0\n")
    for f in (serving_plots.latency_vs_load(trials, tmp_path / "a.png"), serving_plots.throughput_vs_p99(trials, tmp_path / "b.png"),
              serving_plots.timeseries(tmp_path / "monitor.csv", tmp_path / "c.png"),
              serving_plots.latency_vs_load({}, tmp_path / "d.png"), serving_plots.timeseries(tmp_path / "none.csv", tmp_path / "e.png")):
        assert f.stat().st_size > 1000 and f.read_bytes()[:4] == b"\x89PNG"
