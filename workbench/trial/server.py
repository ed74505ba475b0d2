"""The server trial: the highest offered rate a served configuration sustains within its SLO.

``run_server_trial(params)`` builds the variant (:func:`workbench.trial.artifact_for`), serves it
with ``params.serving_engine`` in a process group of its own (always stopped: on success,
failure, timeout; a killed caller is covered by the server's parent watch) and drives it with
the open-loop generator of :mod:`workbench.serve.load`:

* capacity guess: a short closed loop;
* search: a geometric ramp (x2) from a quarter of that guess while the point passes, then at
  most 5 bisection steps (geometric midpoints) between the last pass and the first failure;
* a point passes when its ``slo_percentile``-th latency is within ``slo_ms`` and under 0.1% of
  its requests failed (503 shed, errors, time-outs);
* each point: one warm-up window, then windows of ``min_seconds`` (at least 0.25 s) until the
  last 3 agree within 10% and enough requests were seen to bound the percentile
  (:func:`min_requests`), capped at ``max_seconds``.

Requests carry the eval samples and the answers are scored: ``accuracy_under_load`` must equal
the offline accuracy (the answers are exact), which is checked and reported. A 1 Hz
``monitor.csv`` (:mod:`workbench.measure.monitor`) is written beside the metrics.

The result rests on one load run (the best passing point, else the last point measured): when
:func:`workbench.serve.load.invalid_reasons` finds late sends, a saturated client or failed
requests in it, ``load_valid`` is false and ``load_invalid_reason`` says why; the results table,
the report and ``best.json`` carry both.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench import models, runtimes, variants
from workbench.config import parameters
from workbench.config.parameters import ENGINES
from workbench.config.params import TrialParams
from workbench.core import fingerprint
from workbench.core.errors import TrialPruned
from workbench.export.bundle import write_bundle
from workbench.measure import artifact as artifact_mod
from workbench.measure.monitor import Monitor, cpu_seconds
from workbench.serve import ServeOptions, engine, free_port, kserve, load

AGREE = 0.10  # 3 consecutive windows agree when max/min - 1 <= this
RAMP = 2.0
BISECT_STEPS = 5


def min_requests(percentile: float, confidence: float = 0.99) -> int:
    """Requests needed before the sample's maximum bounds the ``percentile``-th latency with
    ``confidence`` (the order-statistic rule behind LoadGen's early-stopping minimum): p99 needs
    459 at 99% confidence."""
    q = percentile / 100.0
    return int(math.ceil(math.log(1.0 - confidence) / math.log(q)))


class _Point:
    """Decides, while the load runs, when a rate's measurement has converged."""
    def __init__(self, rec: load.Recorder, window: float, cap: float, percentile: float, needed: int):
        self.rec, self.window, self.cap, self.pct, self.needed = rec, window, cap, percentile, needed
        self.values: list[float] = []
        self.converged = False

    def keep_going(self, now: float) -> bool:
        start = self.rec.start
        k = int((now - start) / self.window)  # windows fully elapsed
        while len(self.values) < k - 1:  # window 0 is the warm-up
            i = len(self.values) + 1
            w = self.rec.window(start + i * self.window, start + (i + 1) * self.window)
            self.values.append(w[f"p{self.pct:g}_ms"])
        if len(self.values) >= 3 and self.rec.answered_since(start + self.window) >= self.needed:
            last = self.values[-3:]
            if all(np.isfinite(last)) and min(last) > 0 and max(last) / min(last) - 1 <= AGREE:
                self.converged = True
                return False
        return now - start < self.cap


def _measure(eng, items, rate: float, p, window: float, cap: float, monitor, seed: int) -> dict[str, Any]:
    rec = load.Recorder()
    point = _Point(rec, window, cap, p.slo_percentile, min_requests(p.slo_percentile))
    before = eng.metrics()
    cpu0, wall0, own0 = cpu_seconds(eng.proc.pid), time.perf_counter(), time.process_time()
    monitor.load, monitor.offered = rec, rate
    load.open_loop(eng.infer_url, items, rate, cap + window, seed=seed, rec=rec,
                   timeout=max(10.0, 20 * p.slo_ms / 1e3), keep_going=point.keep_going)
    elapsed = time.perf_counter() - wall0
    after = eng.metrics()
    since = rec.start + window  # after the warm-up window
    done = np.asarray(rec.done_at)
    lat = np.asarray(rec.latency_s)[done >= since] * 1e3
    failed = int(np.sum(np.asarray(rec.fail_at) >= since))
    total = lat.size + failed
    out: dict[str, Any] = {"offered_qps": rate, "answered": int(lat.size), "failed": failed,
                           "error_fraction": failed / total if total else 1.0,
                           "achieved_qps": lat.size / max(1e-9, (max(done[-1], since) - since)) if lat.size else 0.0,
                           "converged": point.converged, "seconds": elapsed,
                           "late_fraction": rec.late / rec.sent if rec.sent else 0.0,
                           "client_cpu": (time.process_time() - own0) / elapsed,
                           "server_cpu_pct": 100.0 * (cpu_seconds(eng.proc.pid) - cpu0) / elapsed}
    for q in load.PERCENTILES:
        out[f"p{q:g}_ms"] = float(np.percentile(lat, q)) if lat.size else float("inf")
    out["slo_value_ms"] = float(np.percentile(lat, p.slo_percentile)) if lat.size else float("inf")
    out["passed"] = bool(lat.size and out["slo_value_ms"] <= p.slo_ms and out["error_fraction"] < load.MAX_ERROR_FRACTION)
    n = after.get("workbench_batch_size_count", 0) - before.get("workbench_batch_size_count", 0)
    s = after.get("workbench_batch_size_sum", 0) - before.get("workbench_batch_size_sum", 0)
    out["mean_batch_size"] = s / n if n > 0 else float("nan")
    out["rejected"] = int(rec.status.get("503", 0))
    out["invalid_reasons"] = load.invalid_reasons(out["late_fraction"], out["client_cpu"], out["error_fraction"])
    rec.accuracy()  # decode the answers now that the load is over
    out["answers"] = rec.answers
    return out


def search(eng, items, p, monitor, log=print) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Ramp then bisect; returns the best passing point (or None) and every point measured."""
    window = max(0.25, p.min_seconds)
    cap = max(5 * window, p.max_seconds)
    clients = max(4, 2 * p.max_batch_size * p.instances)
    for n in (2 * clients, 600):  # the first round opens the connections
        probe = load.closed_loop(eng.infer_url, items, clients, n, score=False)
        capacity = len(probe.latency_s) / max(1e-9, time.perf_counter() - probe.start)
    points: list[dict[str, Any]] = []

    def at(rate: float) -> dict[str, Any]:
        r = _measure(eng, items, rate, p, window, cap, monitor, seed=p.seed + len(points))
        points.append(r)
        log(f"  {rate:9.1f} QPS offered: p{p.slo_percentile:g} {r['slo_value_ms']:.3f} ms, "
            f"errors {r['error_fraction']:.2%}, batch {r['mean_batch_size']:.2f} -> "
            f"{'pass' if r['passed'] else 'fail'}"
            + (f" (load run INVALID: {'; '.join(r['invalid_reasons'])})" if r["invalid_reasons"] else ""))
        return r

    rate = max(1.0, capacity / 4)
    best, lo, hi = None, None, None
    for _ in range(12):  # ramp
        r = at(rate)
        if r["passed"]:
            best, lo = r, rate
            if hi is not None:  # came down from a failure: the edge is between lo and hi
                break
            rate *= RAMP
        else:
            hi = rate
            if lo is not None:
                break
            rate /= RAMP
            if rate < 1.0:
                break
    if lo is not None and hi is not None:
        for _ in range(BISECT_STEPS):
            if hi / lo < 1.05:
                break
            mid = math.sqrt(lo * hi)
            r = at(mid)
            if r["passed"]:
                best, lo = r, mid
            else:
                hi = mid
    return best, points


def run_server_trial(params, out_dir: str | Path = ".", log=print) -> dict[str, Any]:
    """Build, serve and load one configuration; metrics for ``scenario: server``."""
    t_start = time.perf_counter()
    p = params if isinstance(params, TrialParams) else TrialParams.parse(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"status": "complete", "label": _label(p), "params": p.model_dump()}
    try:
        _engine_available(p.serving_engine)
        data, model, artifact = variants.artifact_for(p)
        session = runtimes.load(p, artifact)
    except TrialPruned as err:
        out.update(status="pruned", reason=str(err), total_seconds=time.perf_counter() - t_start)
        return out
    try:
        offline_out = artifact_mod.evaluate(session, data.x_eval, 64)
        offline_top1 = offline_out.argmax(-1)
    finally:
        session.close()
    quality = models.quality(offline_out, data)
    regression = p.task == "regression"
    items = load.payloads(data.x_eval, None if regression else data.y_eval)
    opts = ServeOptions(port=free_port(), max_batch_size=p.max_batch_size, max_queue_delay_ms=p.max_queue_delay_ms,
                        batch_policy=p.batch_policy, instances=p.instances, threads=p.threads,
                        trust_model_code=p.trust_model_code)  # the experiment's word, as the trial ran
    with tempfile.TemporaryDirectory(prefix="workbench-bundle-") as tmp:
        bundle = write_bundle(Path(tmp), p, artifact, data)
        eng = engine(p.serving_engine, bundle, opts)
        t0 = time.perf_counter()
        eng.start(log=out_dir / "server.log")
        try:
            eng.wait_ready(120)
            start_seconds = time.perf_counter() - t0
            with Monitor(out_dir / "monitor.csv", eng.proc.pid, eng.metrics) as monitor:
                best, points = search(eng, items, p, monitor, log)
        finally:
            eng.stop()
    answers: dict[int, set[int]] = {}
    for pt in points:
        for i, v in pt.pop("answers").items():
            answers.setdefault(i, set()).update(v)
    out.update(_accuracy(answers, offline_top1, data, quality, regression))
    out["points"] = points
    chosen = best or {}
    judged = best or (points[-1] if points else {})  # the run the result rests on, else the last one
    reasons = judged.get("invalid_reasons", ["no load run was measured"])
    out.update(
        max_qps_at_slo=float(best["achieved_qps"]) if best else 0.0,
        offered_qps_at_slo=float(best["offered_qps"]) if best else 0.0,
        slo_met=best is not None,
        **{f"latency_{k}": chosen.get(k, float("nan")) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms")},
        mean_batch_size=chosen.get("mean_batch_size", float("nan")),
        server_cpu_pct=chosen.get("server_cpu_pct", float("nan")),
        peak_rss_mb=monitor.peak_rss_mb,
        rejected_requests=int(sum(pt["rejected"] for pt in points)),
        load_valid=not reasons, load_invalid_reason="; ".join(reasons),
        server_start_seconds=start_seconds,
        size_bytes=artifact_mod.size(artifact.path)[0],
        artifact=str(artifact.path), artifact_format=artifact.format,
        fingerprint=fingerprint.collect(),
        total_seconds=time.perf_counter() - t_start,
    )
    out["latency_p999_ms"] = out.pop("latency_p99.9_ms")
    out["baseline_accuracy" if not regression else "baseline_mae"] = (model.accuracy if not regression
                                                                       else model.meta["mae"])
    drop = (quality["mae"] - model.meta["mae"]) if regression else model.accuracy - quality["accuracy"]
    out.update(accuracy_drop=drop, feasible=bool(drop <= p.max_accuracy_drop + 1e-9 and best is not None))
    return out


def _engine_available(name: str) -> None:
    """An engine that cannot run here prunes the trial with the reason (never a silent swap)."""
    if name not in ENGINES:
        raise TrialPruned(f"serving engine {name} is not available in this build of workbench")
    if name == "kserve":

        if not kserve.available():
            raise TrialPruned(f"serving engine kserve: {kserve.unavailable_reason()}")


def _label(p) -> str:
    """e.g. ``onnxruntime int8-static b1 t1 builtin mb8 d2ms idle x1``: only the serving options
    that apply to this engine and batching (a batch of one never waits, so no delay/policy)."""
    values = p.model_dump()
    shown = {"max_batch_size": f"mb{p.max_batch_size}", "max_queue_delay_ms": f"d{p.max_queue_delay_ms:g}ms",
             "batch_policy": p.batch_policy, "instances": f"x{p.instances}"}
    return " ".join([p.describe(), p.serving_engine] +
                    [text for name, text in shown.items() if parameters.applies(name, values)])


def _accuracy(answers, offline_top1, data, quality, regression) -> dict[str, Any]:
    """Accuracy of the answers served under load, and whether it equals the offline one."""
    if regression or not answers:
        return {**quality, "samples_answered": len(answers)}
    idx = sorted(answers)
    consistent = all(len(answers[i]) == 1 for i in idx)
    served = np.array([next(iter(answers[i])) for i in idx])
    acc = float(np.mean(served == data.y_eval[idx]) * 100.0)
    offline_same = float(np.mean(offline_top1[idx] == data.y_eval[idx]) * 100.0)
    return {**quality, "accuracy_under_load": acc, "samples_answered": len(idx),
            "answers_consistent": consistent,
            "accuracy_under_load_matches_offline": bool(consistent and np.array_equal(served, offline_top1[idx])
                                                        and abs(acc - offline_same) < 1e-9)}
