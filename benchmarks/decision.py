"""Does the workbench recommend the right configuration, and how fast does a sampler find it?

Writes ``benchmarks/decision.md``, ``benchmarks/decision.json`` and ``benchmarks/decision_search.png``.
Run: ``python benchmarks/decision.py`` (about 30-45 min on 2 cores; ``--quick`` for a smoke run).

For each case (digits_cnn and cnn32, scenarios single_stream and offline):

1. **Truth.** Every distinct configuration of a small grid (bits 32/16/8, int8 static with and
   without per-channel scales on onnxruntime, LiteRT, 1 and 2 threads; offline: batch 1 and
   32) is built and evaluated once (accuracy, size), then all of them are timed together over
   interleaved rounds in rotating order: 15 rounds in each of 3 fresh processes spread over the
   case (before, between and after its decisions), pooled, so that the truth covers the same
   stretch of a drifting machine as the decisions do. The true best is the best
   feasible candidate (Pareto front of the scenario's objectives, batch 1 for single_stream) by
   the geometric mean over rounds; its tie set is every candidate it does not beat by a paired
   ratio (CI excludes 1 and > 2%: ``decide.beats``).
2. **Decision accuracy.** 10 independent exhaustive "sweeps", each a fresh process with its own
   seed and trial order: every configuration measured one after the other with the default
   protocol (as a user's trials are), then ``decide.choose`` + the interleaved re-measurement of the
   leaders (``decide.remeasure_leaders``, another fresh process) + ``decide.choose``. Target:
   the true best or a member of its tie set in >= 9 of 10. Notebooks are left out (they add
   ~1.2 s of kernel start per trial, not a different measurement: benchmarks/overhead.md).
3. **Search efficiency**, simulated on the measured truth table (sampling from an already
   measured grid): the sweep's strategy (its first trials, ``space.enqueue_first_points``, then
   TPE), and TPE, NSGA-II and random sampling alone, propose configurations through the same
   conditional space as a sweep (``space.suggest``); we count trials until one is a feasible
   candidate within 5% of the true best on the primary metric. Median over 10 seeds, as a
   fraction of the grid size (target <= 30%), and the curve of seeds reached vs trials.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from workbench import config
from workbench.core import fingerprint, scenarios
from workbench.decision import choose, stats
from workbench.decision import remeasure as remeasure_mod
from workbench.measure import reuse
from workbench.results import pareto
from workbench.results import table as table_mod
from workbench.sweep import space
from workbench.sweep.study import trial_settings

CASES = [("digits_cnn", "digits", "single_stream"), ("digits_cnn", "digits", "offline"),
         ("cnn32", "digits32", "single_stream"), ("cnn32", "digits32", "offline")]
SWEEP_PROTOCOL = dict(config.Measurement())  # what a user's sweep measures with (1 s to 10 s a trial)
TRUTH_ROUNDS, TRUTH_SLOT, TRUTH_CHUNKS = 15, 0.1, 3  # 45 rounds in all, in 3 fresh processes
# The truth's table only needs accuracy, size and feasibility (its timing comes from the rounds).
TABLE_PROTOCOL = {"warmup": 1, "min_runs": 5, "min_seconds": 0.0, "max_seconds": 0.5}
DECISIONS = 10
SEEDS = 10
WITHIN = 0.05


def experiment(model: str, data: str, scenario: str, protocol: dict | None = None):
    space = {"bits": [32, 16, 8], "int8_mode": "static", "per_channel": [False, True],
             "runtime": ["onnxruntime", "litert"], "threads": [1, 2],
             "batch_size": [1, 32] if scenario == "offline" else 1}
    return config.parse({"name": f"{model}-{scenario}", "model": model, "data": data, "scenario": scenario,
                         "search_space": space, "measurement": protocol or SWEEP_PROTOCOL, "sampler": "grid"})


def _info(exp) -> dict:
    return {"experiment": exp.name, "study": exp.name, "objectives": exp.objectives,
            "max_accuracy_drop": exp.max_accuracy_drop, "scenario": exp.scenario,
            "latency_percentile": exp.latency_percentile, "task": exp.task}


def measure_all(exp, order: list[int]) -> "object":
    """Every grid point through trial.run (in this process, one after the other), identical
    artifacts with identical run options measured once, as in a sweep: the table."""
    import pandas as pd

    from workbench import trial

    points = space.grid_points(exp)
    rows = []
    measured = Path(tempfile.mkdtemp(prefix="decision-bench-"))
    os.environ[reuse.REUSE_ENV] = str(measured / "measured")
    for i in order:
        params = {**trial_settings(exp), **exp.search_space.fixed(), **points[i]}
        m = trial.run(params)
        reuse.record(measured, i, m)
        state = "COMPLETE" if m["status"] == "complete" else "PRUNED"
        rows.append(table_mod.make_row("trial", str(i), state, params, m if state == "COMPLETE" else None))
    df = pd.DataFrame(rows, columns=table_mod.COLUMNS + table_mod.EXTRA_COLUMNS)
    df["accuracy"] = pd.to_numeric(df["accuracy"], errors="coerce")
    return df


def run_truth(case: int, out: Path) -> None:
    """(fresh process) Grid measured once, then all feasible points interleaved for many rounds."""
    from workbench.trial import remeasure

    exp = experiment(*CASES[case], protocol=TABLE_PROTOCOL)
    df = measure_all(exp, list(range(len(space.grid_points(exp)))))
    ok = df[(df.state == "COMPLETE") & (df.feasible == True)]  # noqa: E712
    cands = [{"trial": str(r.trial), "params": r.params_full, "artifact": r.artifact,
              "artifact_format": r.artifact_format} for _, r in ok.iterrows()]
    res = remeasure.rounds(cands, rounds=TRUTH_ROUNDS, slot_seconds=TRUTH_SLOT)
    sc = scenarios.scenario(exp.scenario)
    rounds = {t: [sc.round_stat(np.asarray(ms), res["batch_size"][t], exp.latency_percentile)
                  for ms in res["times_ms"][t]] for t in res["times_ms"]}
    table = json.loads(df.drop(columns=["latency_quantiles_ms"]).to_json(orient="records"))
    out.write_text(json.dumps({"table": table, "rounds": rounds}))


def truth_best(exp, truth: dict) -> dict:
    """True best and its tie set, from the truth table with the interleaved geometric means."""
    import pandas as pd

    df = pd.DataFrame(truth["table"])
    sc = scenarios.scenario(exp.scenario)
    col = sc.primary(exp.latency_percentile)
    gm = {t: float(np.exp(np.mean(np.log(v)))) for t, v in truth["rounds"].items()}
    df[col] = [gm.get(str(t), np.nan) for t in df.trial]
    info = _info(exp)
    cands, _, _ = choose.candidates(df, info)
    names = [str(t) for t in cands.trial]
    got = stats.settle({t: truth["rounds"][t] for t in names}, sc.direction)
    return {"best": got["leader"], "tied": got["tied"], "col": col, "values": gm, "candidates": names,
            "labels": dict(zip(df.trial.astype(str), df.label)), "n": len(df), "df": df,
            "rounds": truth["rounds"], "direction": sc.direction}


def truth_table(truth: dict) -> list[dict]:
    """The exhaustive grid ranked by the long interleaved re-measurement: each configuration's
    geometric mean over the rounds and its paired ratio to the true best (CI across rounds)."""
    df, best = truth["df"], truth["best"]
    rows = []
    for _, r in df.iterrows():
        t = str(r.trial)
        p = r.params_full if isinstance(r.params_full, dict) else {}
        mode = f"int8 {p.get('int8_mode')}{' per-channel' if p.get('per_channel') else ''}" if r.bits == 8 else f"fp{int(r.bits)}"
        row = {"trial": t, "config": f"{r.runtime} {mode} b{int(r.batch_size)} t{int(r.threads)}",
               "accuracy": r.accuracy, "size_bytes": r.size_bytes, "value": truth["values"].get(t),
               "candidate": t in truth["candidates"], "tied": t in truth["tied"], "state": r.state}
        if t in truth["rounds"] and t != best:
            est, lo, hi = stats.paired_ratio(truth["rounds"][t], truth["rounds"][best])
            row.update(ratio=est, ci=[lo, hi])
        rows.append(row)
    sign = 1 if truth["direction"] == "minimize" else -1
    return sorted(rows, key=lambda x: sign * x["value"] if x["value"] is not None else float("inf"))


def run_decision(case: int, seed: int, out: Path) -> None:
    """(fresh process) One exhaustive sweep in a seeded order, then the full decision."""
    exp = experiment(*CASES[case]).model_copy(update={"seed": seed})
    n = len(space.grid_points(exp))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    df = measure_all(exp, order)
    info = _info(exp)
    best = choose.choose(df, info)
    with tempfile.TemporaryDirectory() as tmp:
        if best and len(best["candidates"]) > 1:
            cands, _, _ = choose.candidates(df, info)
            lead = cands[cands.trial.astype(str).isin(best["candidates"])]
            inter = remeasure_mod.remeasure_leaders(Path(tmp), lead, info)
            best = choose.choose(df, info, inter)
    out.write_text(json.dumps({"trial": best["trial"] if best else None,
                               "candidates": best["candidates"] if best else [],
                               "decided_by": best["decided_by"] if best else None}))


# Search strategies compared: the sweep's (fast paths first, then TPE) and samplers alone.
STRATEGIES = {"workbench": ("tpe", True), "tpe": ("tpe", False), "nsga2": ("nsga2", False),
              "random": ("random", False)}
STRATEGY_NAMES = {"workbench": "sweep (fast paths, then TPE)", "tpe": "TPE alone", "nsga2": "NSGA-II alone",
                  "random": "random"}


def search_efficiency(exp, truth: dict, strategy: str, seed: int) -> tuple[int | None, list[int]]:
    """Trials until a feasible candidate within WITHIN of the true best is proposed (simulated).

    ``strategy`` (:data:`STRATEGIES`): a sampler, and whether the sweep's first trials
    (``space.enqueue_first_points``) come before it, as in ``workbench sweep``."""
    sampler, first = STRATEGIES[strategy]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    df = truth["df"]
    col, sc = truth["col"], scenarios.scenario(exp.scenario)
    points = space.grid_points(exp)
    best_val = truth["values"][truth["best"]]
    good = set()
    for _, r in df.iterrows():
        v = truth["values"].get(str(r.trial))
        ok = r.feasible and v is not None and (not sc.batch_one or r.batch_size == 1)
        if ok and (v <= best_val * (1 + WITHIN) if sc.direction == "minimize" else v >= best_val / (1 + WITHIN)):
            good.add(int(r.trial))
    make = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "random": optuna.samplers.RandomSampler}[sampler]
    directions = [pareto.directions([o])[0] for o in exp.objectives]
    study = optuna.create_study(directions=["maximize" if d < 0 else "minimize" for d in directions],
                                sampler=make(seed=seed))
    if first:
        space.enqueue_first_points(study, exp.model_copy(update={"sampler": sampler}), len(points))
    seen, measured, found = set(), [], None
    asks = 0
    while len(seen) < len(points) and asks < 20 * len(points):
        asks += 1
        t = study.ask()
        p = space.suggest(t, exp)
        i = next(k for k, q in enumerate(points) if all(p.get(a) == b for a, b in q.items()))
        if i in seen:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            continue
        seen.add(i)
        measured.append(i)
        r = df[df.trial.astype(int) == i].iloc[0]
        vals = [truth["values"].get(str(i), r[o]) if o == col else r[o] for o in exp.objectives]
        if any(v is None or v != v for v in vals):
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, [float(v) for v in vals])
        if found is None and i in good:
            found = len(measured)
    return found, measured


def _sub(args: list[str]) -> None:
    subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", type=int)
    ap.add_argument("--decide", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--render", help="re-render decision.md from this decision.json (seconds from --seconds)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="seconds already spent (a resumed run, or --render) to report in the header")
    ap.add_argument("--resume", help="a work directory of an interrupted run: finished parts are kept")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 decisions, 3 seeds, first case only; writes to a temp dir")
    a = ap.parse_args()
    if a.truth is not None:
        return run_truth(a.truth, Path(a.out))
    if a.decide is not None:
        return run_decision(a.decide, a.seed, Path(a.out))
    if a.render:
        res = json.loads(Path(a.render).read_text())
        return write(res, a.seconds, len(res[0]["picks"]), len(res[0]["eff"]["tpe"]))
    decisions, seeds = (2, 3) if a.quick else (DECISIONS, SEEDS)
    cases = range(1) if a.quick else range(len(CASES))
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.resume or tmp
        print(f"work directory: {tmp}", file=sys.stderr)
        for c in cases:
            exp = experiment(*CASES[c])
            print(f"[{time.perf_counter() - t0:5.0f}s] truth {exp.name} ({len(space.grid_points(exp))} configs)",
                  file=sys.stderr)
            # The truth is measured in chunks spread over the case (before, between and after
            # the decisions) and pooled: it is then the same stretch of a drifting machine that
            # the decisions sampled, not one minute of it.
            at = {k * decisions // (TRUTH_CHUNKS - 1) for k in range(TRUTH_CHUNKS)}
            picks = []
            for s in range(decisions + 1):
                if s in at:
                    k = sorted(at).index(s)
                    tpath = Path(tmp) / f"truth{c}-{k}.json"
                    if not tpath.exists():
                        print(f"[{time.perf_counter() - t0:5.0f}s] truth {exp.name} part {k + 1} of {TRUTH_CHUNKS}",
                              file=sys.stderr)
                        _sub(["--truth", str(c), "--out", str(tpath)])
                if s == decisions:
                    break
                print(f"[{time.perf_counter() - t0:5.0f}s] decision {exp.name} seed {s}", file=sys.stderr)
                dpath = Path(tmp) / f"d{c}-{s}.json"
                if not dpath.exists():
                    _sub(["--decide", str(c), "--seed", str(s), "--out", str(dpath)])
                picks.append(json.loads(dpath.read_text())["trial"])
            parts = [json.loads((Path(tmp) / f"truth{c}-{k}.json").read_text()) for k in range(TRUTH_CHUNKS)]
            truth = truth_best(exp, {"table": parts[0]["table"],
                                     "rounds": {t: sum((p["rounds"][t] for p in parts), [])
                                                for t in parts[0]["rounds"]}})
            eff = {k: [search_efficiency(exp, truth, k, s) for s in range(seeds)] for k in STRATEGIES}
            results.append({"case": exp.name, "n": truth["n"], "col": truth["col"], "best": truth["best"],
                            "tied": truth["tied"], "labels": truth["labels"], "values": truth["values"],
                            "picks": picks, "eff": {k: [f for f, _ in v] for k, v in eff.items()},
                            "truth_table": truth_table(truth)})
        write(results, time.perf_counter() - t0 + a.seconds, decisions, seeds, Path(tmp) if a.quick else HERE)
        if a.quick:
            print((Path(tmp) / "decision.md").read_text())


# What the figures mean, written after looking at them (re-render with --render after editing).
READING = (
    "Reading (run of 2026-11-29 evening; nothing else ran, load about 1). Three of the four cases "
    "meet the decision target with 10 of 10. In digits_cnn single_stream the picks spread over the "
    "tie set (LiteRT fp32 and fp16 at 2 threads, int8 at 1 thread, within 6% of each other): that "
    "is what a tie is. **cnn32 single_stream misses (0 of 10)**, and consistently: all ten "
    "decisions picked trial 5 (onnxruntime int8 per-tensor, 2 threads), 0.3 pt more accurate and "
    "9 KB smaller than the truth's best 13 (LiteRT int8, 2 threads), which the pooled truth puts "
    "ahead by 1.107 [1.037, 1.181] (its three parts: 1.137, 1.049, 1.136). Five minutes after the "
    "run, three fresh processes timing only those two over 21 rounds each put trial 5 ahead "
    "instead: 13/5 = 1.24 [1.08, 1.42]; 5/13 = 0.80 [0.71, 0.91] and 0.77 [0.67, 0.88]. On this "
    "2-core VM the order of two 2-thread runtimes within 20% of each other changes from one "
    "quarter of an hour to the next; the decisions agreed with each other, the machine did not "
    "agree with itself.\n\n"
    "Search: the sweep's first trials reach the best offline configuration in 1-2 trials and "
    "cnn32's single_stream best in 2, where the samplers alone need 16-50% of the grid. They cost "
    "their trials when the best is not static int8: digits_cnn single_stream (LiteRT fp32/fp16 at "
    "2 threads, a 20 us model where int8 saves no time) misses the 30% target at 36%, against 14% "
    "for TPE alone. A first version tried "
    "each runtime at the fewest and then the most threads; with a budget of 14 its quarter (3 "
    "trials) cut LiteRT at 2 threads, and it scored 36%, 14%, 71% and 7% on the same truth. "
    "Most threads first is the order kept.\n\n"
    "The earlier run (2026-11-29 afternoon, five other test suites on the machine, trials timed "
    "for 0.1-1 s, leaders within 10%, a fixed 7 rounds, the truth in one process) scored 9, 2, 4 "
    "and 2 of 10; what changed since: the default protocol (1-10 s per trial, what a user's "
    "sweep uses), leaders within 25% of the best, 7 more rounds while a gap over 2% stays inside "
    "the CI, and a truth spread over the same stretch of time as the decisions."
)


def _median_trials(r: dict, strategy: str) -> float:
    return float(np.median([x if x is not None else r["n"] + 1 for x in r["eff"][strategy]]))


def write(results: list[dict], seconds: float, decisions: int, seeds: int, out: Path = HERE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = fingerprint.collect()
    (out / "decision.json").write_text(json.dumps(results, indent=2))
    lines = ["# Decision: does the workbench recommend the right configuration?", "",
             f"Produced by `benchmarks/decision.py` on {datetime.date.today()}, host `{fp['host']}`, "
             f"{fp['cpu']['model']}, {fp['cpu']['cores']} cores; took {seconds:.0f} s. The machine is "
             "shared with other developers: every number includes whatever else ran.", "",
             "Truth: every distinct configuration of a small grid, timed together over "
             f"{TRUTH_ROUNDS * TRUTH_CHUNKS} interleaved rounds ({TRUTH_SLOT} s per configuration per round) "
             f"in {TRUTH_CHUNKS} fresh processes spread over each case (before, between and after its "
             "decisions), pooled; tie "
             "set = what the best does not beat by a paired ratio (CI excludes 1 and > 2%). Decisions: "
             f"independent exhaustive sweeps in fresh processes (protocol {SWEEP_PROTOCOL}), then the "
             f"workbench's decision (leaders re-measured together over {remeasure_mod.ROUNDS} rounds, "
             f"{remeasure_mod.ROUNDS} more while undecided up to {remeasure_mod.MAX_ROUNDS}; paired ratios).", "",
             f"## Decision accuracy ({decisions} independent sweeps per case; target >= 9 of 10)", "",
             "| case | configs | true best | tie set | picks | in tie set |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        hits = sum(p in r["tied"] for p in r["picks"])
        lines.append(f"| {r['case']} | {r['n']} | {r['best']} ({r['labels'][r['best']]}, {r['col']} "
                     f"{r['values'][r['best']]:.4g}) | {', '.join(r['tied'])} | {', '.join(map(str, r['picks']))} | "
                     f"{hits} of {len(r['picks'])} |")
    lines += ["", f"## Search efficiency (simulated on the truth table; median over {seeds} seeds; target <= 30%)", "",
              f"Trials until a feasible candidate within {WITHIN:.0%} of the true best is proposed, as a "
              "fraction of the grid. Duplicates are not counted (a sweep does not measure them twice). "
              "The sweep's strategy measures each runtime's fast path (static int8, per-channel) at the "
              "most threads, then at the fewest (`space.first_points`, at most a quarter of the "
              "trials), then lets TPE propose; the other columns are the samplers alone.", "",
              "| case | grid | " + " | ".join(STRATEGY_NAMES[k] for k in STRATEGIES) + " |",
              "| --- | --- | " + " | ".join("---" for _ in STRATEGIES) + " |"]
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        cells = []
        for k in STRATEGIES:
            f = [x if x is not None else r["n"] + 1 for x in r["eff"][k]]
            med = _median_trials(r, k)
            cells.append(f"{med:.1f} ({med / r['n']:.0%})")
            xs = np.arange(1, r["n"] + 1)
            ax.step(xs, [np.mean([v <= x for v in f]) for x in xs], where="post", label=STRATEGY_NAMES[k])
        lines.append(f"| {r['case']} | {r['n']} | " + " | ".join(cells) + " |")
        ax.set_title(r["case"], fontsize=9)
        ax.set_xlabel("trials")
        ax.set_ylabel("seeds within 5% of best")
        ax.axvline(0.3 * r["n"], color="grey", ls=":")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "decision_search.png", dpi=80)
    lines += ["", "![seeds that found a configuration within 5% of the best vs trials](decision_search.png)", "",
              "## Verdict", ""]
    for r in results:
        hits = sum(p in r["tied"] for p in r["picks"])
        eff = {k: _median_trials(r, k) / r["n"] for k in STRATEGIES}
        lines.append(f"- {r['case']}: decision {hits} of {len(r['picks'])} "
                     f"({'meets' if hits >= 0.9 * len(r['picks']) else 'MISSES'} the 9 of 10 target); "
                     f"the sweep's search {eff['workbench']:.0%} of the grid "
                     f"({'meets' if eff['workbench'] <= 0.3 else 'MISSES'} the 30% target); TPE alone "
                     f"{eff['tpe']:.0%}, random {eff['random']:.0%}.")
    if READING:
        lines += ["", READING]
    lines += ["", f"## Truth tables ({TRUTH_ROUNDS * TRUTH_CHUNKS} interleaved rounds)", "",
              "Every configuration of each grid, best first by the geometric mean over the rounds. "
              "Ratio: this configuration's metric over the true best's, paired round by round, with "
              "its 95% CI across rounds (latency: above 1 is slower; throughput: below 1 is slower). "
              "Candidate: feasible, on the Pareto front, answers the scenario (single_stream: batch 1). "
              "LiteRT's int8 has no per-tensor variant (the TFLite converter always uses per-channel "
              "scales), so per_channel is not enumerated there.", ""]
    for r in results:
        lines += [f"### {r['case']} ({r['col']})", "",
                  "| trial | configuration | accuracy | size (bytes) | " + r["col"] + " | ratio to best [95% CI] | candidate | tie set |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for x in r.get("truth_table", []):
            ratio = (f"{x['ratio']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]" if "ratio" in x
                     else "best" if x["trial"] == r["best"] else "")
            val = f"{x['value']:.4g}" if x["value"] is not None else x["state"]
            acc = f"{x['accuracy']:.2f}" if x["accuracy"] is not None else ""
            lines.append(f"| {x['trial']} | {x['config']} | {acc} | {x['size_bytes'] or ''} | {val} | {ratio} | "
                         f"{'yes' if x['candidate'] else 'no'} | {'yes' if x['tied'] else ''} |")
        lines.append("")
    (out / "decision.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
