"""How far the workbench's numbers can be trusted: timing overhead, repeatability, and whether
the recommendation survives a re-measurement. Writes benchmarks/measurement.md.

Run with `.venv/bin/python benchmarks/measurement.py` (about 3 minutes; uses the artifact cache).
1. workbench p50 / bare-loop p50 (``workbench bench``) for the digits CNN fp32 and static int8
   at batch 1 and 32: target 1.00-1.05.
2. CV of p50 over 10 repeated measurements of one session (the sweep protocol): target < 5%.
3. A small real sweep; its completed trials re-measured 10 times (separate sessions, as a sweep
   would) and the recommendation recomputed each time, without and with the interleaved
   re-measurement of overlapping candidates: target the same winner in 9 of 10.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tqdm import tqdm  # noqa: E402

from workbench import config, data, models, runtimes, sweep, variants
from workbench.config.params import TrialParams
from workbench.core import fingerprint
from workbench.decision import best, choose
from workbench.decision import remeasure as remeasure_mod
from workbench.measure import bench, timing
from workbench.results import rundir, table
from workbench.trial import remeasure

REPEATS = 10
PROTOCOL = dict(warmup=10, min_runs=50, min_seconds=0.5, max_seconds=5.0)


def artifact(bits: int, batch: int) -> tuple[TrialParams, variants.Artifact]:
    p = TrialParams(bits=bits, int8_mode="static", batch_size=batch, threads=1)
    d = data.load(p.data)
    return p, variants.build(models.resolve(p.model, d), d, p, p.calibration_samples)


def overhead() -> list[dict]:
    out = []
    for bits in (32, 8):
        for batch in (1, 32):
            _, art = artifact(bits, batch)
            r = bench.bench_onnx(art.path, batch_size=batch, threads=1, seconds=0.5, repeats=5)
            out.append({"config": f"{'fp32' if bits == 32 else 'int8-static'} b{batch}", **r})
    return out


def repeatability() -> list[dict]:
    out = []
    for bits in (32, 8):
        p, art = artifact(bits, 1)
        d = data.load(p.data)
        batch = timing.timing_batch(d.x_eval, p.batch_size)
        session = runtimes.load(p, art)
        p50s, unstable = [], 0
        with timing.exclusive():
            for _ in range(REPEATS):
                s = timing.summarize(timing.time_calls(lambda: session.run(batch), **PROTOCOL), 1)
                p50s.append(s["latency_p50_ms"])
                unstable += s["unstable"]
        session.close()
        a = np.array(p50s)
        out.append({"config": f"{'fp32' if bits == 32 else 'int8-static'} b1", "p50s_ms": p50s,
                    "cv": float(a.std(ddof=1) / a.mean()), "unstable": unstable})
    return out


def stability(tmp: Path) -> dict:
    exp_path = tmp / "stab.yaml"
    exp_path.write_text("\n".join([
        "name: stab", "sampler: grid", "n_trials: 4", "max_accuracy_drop: 1.0",
        f"measurement: {json.dumps(PROTOCOL)}",
        "search_space:", "  bits: [32, 8]", "  batch_size: [1, 32]", "  threads: 1"]) + "\n")
    run_dir = sweep.run(config.load(exp_path), runs_dir=tmp / "runs", progress=False)
    base = table.load_table(run_dir, extras=True)
    info = rundir.run_info(run_dir)
    first = choose.choose(base, info)
    done = base[(base.kind == "trial") & (base.state == "COMPLETE")]
    plain, inter = [], []
    for i in tqdm(range(REPEATS), desc="re-measure", file=sys.stderr):
        df = base.copy()
        for idx, r in done.iterrows():
            p = TrialParams.parse(r.params_full)
            session, batch, _ = remeasure.open_candidate(r.params_full, r.artifact, r.artifact_format)
            with timing.exclusive():
                s = timing.summarize(timing.time_calls(lambda: session.run(batch), p.warmup, p.min_runs,
                                                         p.min_seconds, p.max_seconds), p.batch_size, seed=i)
            session.close()
            for k in ("latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_p90_ms"):
                df.loc[idx, k] = s[k]
        plain.append(choose.choose(df, info)["trial"])
        (run_dir / remeasure_mod.REMEASURE_FILE).unlink(missing_ok=True)  # measure the leaders afresh
        inter.append(best.decide(run_dir, df=df)["trial"])
    return {"sweep_winner": first["trial"], "sweep_reason": first["reason"],
            "labels": dict(zip(done.trial, done.label)), "plain": plain, "interleaved": inter}


def _share(winners: list[str]) -> tuple[str, int]:
    top, n = collections.Counter(winners).most_common(1)[0]
    return top, n


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        print("overhead ...", file=sys.stderr)
        ov = overhead()
        print("repeatability ...", file=sys.stderr)
        rp = repeatability()
        print("recommendation stability (small sweep, then 10 re-measurements) ...", file=sys.stderr)
        st = stability(Path(tmp))
    fp = fingerprint.collect()
    lines = [
        "# Measurement: overhead, repeatability, stability of the recommendation", "",
        f"Produced by `benchmarks/measurement.py` on {datetime.date.today()}, host `{fp['host']}`, "
        f"{fp['cpu']['model']}, {fp['cpu']['cores']} cores, onnxruntime {fp['versions'].get('onnxruntime')}; "
        f"took {time.perf_counter() - t0:.0f} s.", "",
        "**Caveat: the machine is shared.** Other developers ran their test suites on the same 2 cores "
        "while this ran, so every number below includes their noise; the measurement lock only "
        "serializes workbench measurements, not other processes.", "",
        "## 1. Timing overhead: workbench p50 vs a bare loop (target 1.00-1.05)", "",
        "Same onnxruntime session, same fixed input, same process; alternating blocks of 20 calls "
        "for 2.5 s in all, each p50 over all of its calls. The bare loop times `InferenceSession.run` with a "
        "prebuilt feed and per-call `perf_counter_ns`; the workbench path adds its Session wrapper "
        "and the lambda in `measure.time_calls`.", "",
        "| model | workbench p50 (ms) | bare loop p50 (ms) | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| digits CNN {r['config']} | {r['workbench_p50_ms']:.5f} | {r['bare_loop_p50_ms']:.5f} | "
              f"{r['ratio']:.3f} |" for r in ov]
    lines += ["", f"## 2. Repeatability: CV of p50 over {REPEATS} measurements of one session (target < 5%)", "",
              f"Protocol {PROTOCOL}, batch 1, one thread.", "",
              "| model | p50s (ms) | CV of p50 | runs flagged unstable |", "| --- | --- | --- | --- |"]
    lines += [f"| digits CNN {r['config']} | {', '.join(f'{v:.4f}' for v in r['p50s_ms'])} | "
              f"{r['cv']:.1%} | {r['unstable']} of {REPEATS} |" for r in rp]
    lines += ["", "When the p50s jump between two levels, the machine changed state between measurements (another process on the second core): each measurement's own CI is narrow, so none is flagged unstable, and only re-measuring close candidates together (interleaved, section 3) protects a decision from it."]
    top_p, n_p = _share(st["plain"])
    top_i, n_i = _share(st["interleaved"])
    lines += ["", f"## 3. Stability of the recommendation over {REPEATS} re-measurements (target 9 of 10)", "",
              "A real 4-trial grid sweep (fp32/int8-static x batch 1/32, one thread, the protocol above); "
              "then every completed trial re-measured in a fresh session, one after the other as a "
              "sweep does, and `decide.choose` applied to the new numbers: on those numbers alone, and "
              "with the leading candidates re-measured together (`decide.decide`: interleaved rounds "
              "in a fresh process, paired ratios). See benchmarks/decision.md for the full study.", "",
              f"Sweep's recommendation: trial {st['sweep_winner']} ({st['labels'].get(st['sweep_winner'])}): "
              f"{st['sweep_reason']}.", "",
              "| decision | winners over the 10 re-measurements | most frequent |", "| --- | --- | --- |",
              f"| p50 CIs only | {', '.join(st['plain'])} | trial {top_p} in {n_p} of {REPEATS} |",
              f"| with interleaved re-measurement | {', '.join(st['interleaved'])} | trial {top_i} in {n_i} of {REPEATS} |",
              "", "Trials: " + "; ".join(f"{k}: {v}" for k, v in st["labels"].items()) + ".", ""]
    verdict = [
        "## Verdict", "",
        f"- Overhead ratio: {min(r['ratio'] for r in ov):.3f}-{max(r['ratio'] for r in ov):.3f} "
        f"({'within' if all(r['ratio'] <= 1.05 for r in ov) else 'NOT all within'} the 1.05 target).",
        "- CV of p50: " + ", ".join(f"{r['config']} {r['cv']:.1%}" for r in rp) + " "
        f"({'within' if all(r['cv'] < 0.05 for r in rp) else 'NOT all within'} the 5% target).",
        f"- Recommendation: same winner in {n_p}/10 (CIs only) and {n_i}/10 (interleaved) "
        f"({'meets' if max(n_p, n_i) >= 9 else 'misses'} the 9-of-10 target).", ""]
    (HERE / "measurement.md").write_text("\n".join(lines[:2] + lines[2:] + verdict))
    print((HERE / "measurement.md").read_text())


if __name__ == "__main__":
    main()
