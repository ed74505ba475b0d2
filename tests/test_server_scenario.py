"""``scenario: server`` end to end: the experiment fields, the conditional serving parameters,
the decision (highest max_qps_at_slo, no in-process re-measurement), and real sweeps of
``experiments/server.yaml`` (papermill notebooks, SQLite study, real servers on loopback) that
leave no server process behind, also when the sweep is killed with SIGKILL and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from workbench import config, sweep
from workbench.config import parameters
from workbench.config.params import TrialParams
from workbench.core import scenarios
from workbench.core.errors import ConfigError
from workbench.decision import best as best_mod
from workbench.decision import choose, remeasure
from workbench.measure import reuse
from workbench.results import table
from workbench.results.storage import open_storage
from workbench.sweep import space, study

ROOT = Path(__file__).resolve().parents[1]
SERVER_YAML = ROOT / "experiments" / "server.yaml"
SERVING = ("serving_engine", "max_batch_size", "max_queue_delay_ms", "batch_policy", "instances")


def test_server_experiment_fields():
    exp = config.load(SERVER_YAML)
    assert exp.scenario == "server" and exp.slo_ms > 0 and exp.slo_percentile == 99
    assert exp.objectives == ["accuracy", "max_qps_at_slo", "size_bytes"]
    assert config.parse({"name": "x", "scenario": "server", "slo_ms": 5}).slo_percentile == 99
    reg = config.parse({"name": "x", "scenario": "server", "slo_ms": 5, "task": "regression"})
    assert reg.objectives == ["mae", "max_qps_at_slo", "size_bytes"]
    for bad, where in (({"scenario": "server"}, "slo_ms: required for scenario server"),
                       ({"slo_ms": 5}, "slo_ms: only for scenario server"),
                       ({"slo_percentile": 95}, "slo_percentile: only for scenario server"),
                       ({"scenario": "server", "slo_ms": -1}, "slo_ms"),
                       ({"scenario": "server", "slo_ms": 5, "slo_percentile": 100}, "slo_percentile")):
        with pytest.raises(ConfigError, match=where) as err:
            config.parse({"name": "x", **bad}, "e.yaml")
        assert "\n" not in str(err.value) and str(err.value).startswith("e.yaml: ")
    with pytest.raises(ConfigError, match="max_batch_size"):
        config.parse({"name": "x", "scenario": "server", "slo_ms": 5, "search_space": {"max_batch_size": 0}})
    with pytest.raises(ConfigError, match="serving_engine"):
        config.parse({"name": "x", "scenario": "server", "slo_ms": 5,
                      "search_space": {"serving_engine": "triton"}})


def test_question_names_the_slo():
    exp = config.parse({"name": "x", "scenario": "server", "slo_ms": 10})
    info = {"scenario": "server", "slo_ms": exp.slo_ms, "slo_percentile": exp.slo_percentile,
            "max_accuracy_drop": 1.0}
    assert scenarios.question(info) == "server: highest QPS with p99 <= 10 ms, accuracy drop <= 1 pt"
    assert "p95 <= 2.5 ms" in scenarios.question({**info, "slo_ms": 2.5, "slo_percentile": 95})


def test_serving_parameters_apply_only_to_server_and_to_engines_that_take_them():
    server = {"scenario": "server", "serving_engine": "builtin", "max_batch_size": 8}
    assert all(parameters.applies(n, server) for n in SERVING)
    assert not any(parameters.applies(n, {"scenario": "single_stream"}) for n in SERVING)
    kserve = {**server, "serving_engine": "kserve"}  # no batcher, no instances
    assert parameters.applies("serving_engine", kserve)
    assert not any(parameters.applies(n, kserve) for n in SERVING[1:])
    one = {**server, "max_batch_size": 1}  # a batch of one never waits
    assert parameters.applies("instances", one)
    assert not parameters.applies("max_queue_delay_ms", one) and not parameters.applies("batch_policy", one)


def test_sampled_serving_options_follow_the_engine():
    exp = config.parse({"name": "x", "scenario": "server", "slo_ms": 10, "sampler": "random", "search_space": {
        "serving_engine": ["builtin", "kserve"], "max_batch_size": [1, 8], "max_queue_delay_ms": [0, 2],
        "batch_policy": ["idle", "delay"], "instances": [1, 2]}})
    points = space.grid_points(exp)
    kserve = [p for p in points if p["serving_engine"] == "kserve"]
    assert kserve == [{"serving_engine": "kserve"}]  # nothing of the batcher is sampled for it
    assert len(points) == 1 + 2 * (1 + 2 * 2)  # builtin: instances x (mb1 + mb8 x delay x policy)
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = st.ask()
        p = space.suggest(t, exp)
        assert set(t.params) == set(p) - set(exp.search_space.fixed())
        if p["serving_engine"] == "kserve":
            assert not set(SERVING[1:]) & set(t.params)
        TrialParams.parse({**study.trial_settings(exp), **p})  # every sampled point is a valid trial
    single = config.parse({"name": "y", "search_space": {"max_batch_size": [1, 8]}})
    assert space.grid_points(single) == [{}]  # not sampled outside the server scenario


def test_trial_settings_carry_the_scenario_and_slo():
    exp = config.load(SERVER_YAML)
    s = study.trial_settings(exp)
    assert (s["scenario"], s["slo_ms"], s["slo_percentile"]) == ("server", exp.slo_ms, 99)
    assert "slo_ms" not in study.trial_settings(config.parse({"name": "x"}))


def test_automatic_server_space_is_small(monkeypatch):
    exp = config.parse({"name": "x", "model": "digits_mlp", "scenario": "server", "slo_ms": 10})
    facts = {"format": "keras", "share": 0.9, "trainable": True}
    resolved = space.resolve(exp, facts)
    points = space.distinct(resolved)
    assert 1 < len(points) <= space.MAX_DEFAULT_TRIALS and resolved.n_trials == len(points)
    assert {p.get("max_batch_size") for p in points} >= {1, 8}
    assert all(p.get("bits", 32) in (32, 8) for p in points)
    assert all("max_queue_delay_ms" not in p for p in points if p.get("max_batch_size") == 1)


def _server_table(rows):
    cols = {c: None for c in table.COLUMNS + table.EXTRA_COLUMNS}
    out = []
    for i, r in enumerate(rows):
        base = {**cols, "trial": str(i), "kind": "trial", "state": "COMPLETE", "label": f"t{i}",
                "feasible": True, "hardware_id": "h", "batch_size": 1, "sparsity": 0.0, "bits": 32,
                "accuracy": 98.0, "accuracy_drop": 0.0, "size_bytes": 1000, "latency_p50_ms": 1.0}
        base.update(r)
        out.append(base)
    return pd.DataFrame(out)


INFO = {"experiment": "x", "study": "x", "objectives": ["accuracy", "max_qps_at_slo", "size_bytes"],
        "max_accuracy_drop": 1.0, "scenario": "server", "slo_ms": 10.0, "slo_percentile": 99.0}


def test_recommendation_is_the_highest_qps_and_ties_go_to_the_smallest():
    df = _server_table([dict(max_qps_at_slo=900.0, size_bytes=4000),
                        dict(max_qps_at_slo=1200.0, size_bytes=4000, bits=32),
                        dict(max_qps_at_slo=1190.0, size_bytes=1000, bits=8),  # within 2%: tied, smaller
                        dict(max_qps_at_slo=5000.0, size_bytes=500, feasible=False)])  # accuracy drop too big
    best = choose.choose(df, INFO, {"skipped": "why"})
    assert best["trial"] == "2" and best["tie"] and best["tied_with"] == ["1"]
    assert best["primary_metric"] == "max_qps_at_slo" and best["direction"] == "maximize"
    assert "no interleaved re-measurement: why" in best["reason"]
    clear = _server_table([dict(max_qps_at_slo=900.0), dict(max_qps_at_slo=1300.0)])
    assert choose.choose(clear, INFO)["trial"] == "1"


def _server_run_dir(tmp_path):
    """A run directory of a server experiment (run.json and experiment.yaml, no study)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({**{k: INFO[k] for k in ("experiment", "study", "objectives",
                                                                           "max_accuracy_drop")},
                                                  "storage": "unused"}))
    (run_dir / "experiment.yaml").write_text("scenario: server\nslo_ms: 10.0\nslo_percentile: 99.0\n")
    return run_dir


def test_decide_skips_the_in_process_remeasurement_for_server(tmp_path):
    """decide() on a server run writes best.json without re-measuring, and says why."""
    run_dir = _server_run_dir(tmp_path)
    df = _server_table([dict(max_qps_at_slo=1000.0, size_bytes=900), dict(max_qps_at_slo=1010.0, artifact="/none")])
    doc = best_mod.decide(run_dir, df=df)  # two leaders: a single_stream run would re-measure them
    assert doc["trial"] == "0" and doc["tie"] and doc["decided_by"] == "sweep measurements"  # within 2%: smaller
    assert "not re-measured" in doc["remeasure_skipped"] and doc["interleaved"]["skipped"]
    assert not (run_dir / remeasure.REMEASURE_FILE).exists()
    assert json.loads((run_dir / "best.json").read_text())["question"].startswith("server: highest QPS with p99")



def test_an_invalid_load_run_is_marked_in_the_table_best_json_and_the_report(tmp_path):
    """A server trial whose load run was invalid keeps its figures, is marked in its row with the
    reason, and best.json and the report say the recommendation rests on it."""
    from workbench.report import summary

    row = table.make_row("trial", "0", "COMPLETE", {}, {"max_qps_at_slo": 800.0, "size_bytes": 900,
                                                         "accuracy_drop": 0.0, "load_valid": False,
                                                         "load_invalid_reason": "4.0% of sends were more than 1 ms late"},
                         table.SERVER_NEEDED)
    assert row["load_valid"] is False and "late" in row["load_invalid_reason"] and row["reason"] is None
    valid_row = table.make_row("trial", "1", "COMPLETE", {}, {"max_qps_at_slo": 500.0, "size_bytes": 900,
                                                               "accuracy_drop": 0.0, "load_valid": True,
                                                               "load_invalid_reason": ""}, table.SERVER_NEEDED)
    assert valid_row["load_valid"] is True and valid_row["load_invalid_reason"] is None
    assert "load_valid" in table.SERVER_SUMMARY_COLUMNS
    run_dir = _server_run_dir(tmp_path)
    reasons = {"load_invalid_reason": "4.0% of sends were more than 1 ms late"}
    df = _server_table([dict(max_qps_at_slo=800.0, load_valid=False, **reasons),
                        dict(max_qps_at_slo=500.0, load_valid=True)])
    doc = best_mod.decide(run_dir, df=df)
    written = json.loads((run_dir / "best.json").read_text())
    assert doc["trial"] == written["trial"] == "0"
    assert written["load_valid"] is False and written["load_invalid_reason"] == reasons["load_invalid_reason"]
    assert written["load_runs"].startswith("rests on an INVALID load run (4.0% of sends")
    assert written["invalid_load_trials"] == ["0"] and written["row"]["load_valid"] is False
    md = summary.markdown(INFO, df, written, best_mod.headline(df, written))
    assert "Its load run was INVALID" in md and "- load runs: rests on an INVALID load run" in md
    assert "| load_valid |" in md.split("## All columns")[0]  # the trials table has the column
    ok = _server_table([dict(max_qps_at_slo=800.0, load_valid=True), dict(max_qps_at_slo=500.0, load_valid=True)])
    good = best_mod.decide(run_dir, df=ok)
    assert good["load_valid"] and good["load_runs"].startswith("rests on valid load runs")
    assert "INVALID" not in summary.markdown(INFO, ok, good, best_mod.headline(ok, good))

# --- real sweeps ------------------------------------------------------------------------------

def _servers(tmp_path: Path) -> list[psutil.Process]:
    """Builtin servers (``-m workbench.serve.app``) started by a sweep of ``tmp_path``: they
    inherit the sweep's environment, whose measured-results directory lies under it (servers of
    other tests on the machine are not ours; an orphan is no longer our child, so this looks at
    every process)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if ("workbench.serve.app" in cmd and p.info["status"] != psutil.STATUS_ZOMBIE
                    and p.environ().get(reuse.REUSE_ENV, "").startswith(str(tmp_path))):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _gone(pids: set[int], seconds: float = 60.0) -> set[int]:
    """Those of ``pids`` still alive (not zombies) after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def _listening(pids: set[int]) -> list:
    return [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]


@pytest.mark.slow
def test_server_experiment_sweeps_end_to_end(tmp_path):
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}  # another test's session fixtures, if any
    exp = config.load(SERVER_YAML)
    run_dir = sweep.run(exp, runs_dir=tmp_path / "runs", progress=False)
    assert not _gone({c.pid for c in me.children(recursive=True)} - before, seconds=10)
    assert not _servers(tmp_path)  # no server of ours is left, not even an orphan
    best = json.loads((run_dir / "best.json").read_text())
    assert best["question"] == (f"server: highest QPS with p99 <= {exp.slo_ms:g} ms, accuracy drop <= 1 pt")
    assert best["scenario"] == "server" and best["primary_metric"] == "max_qps_at_slo"
    assert "not re-measured" in best["remeasure_skipped"]
    assert best["trial"] is not None, best.get("reason")
    st = optuna.load_study(study_name=exp.name, storage=open_storage(f"sqlite:///{run_dir / 'study.db'}"))
    done = [t for t in st.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    chosen = st.trials[int(best["trial"])].user_attrs["metrics"]
    assert chosen["max_qps_at_slo"] > 0 and chosen["feasible"] and chosen["slo_met"]
    assert chosen["max_qps_at_slo"] == max(t.user_attrs["metrics"]["max_qps_at_slo"] for t in done
                                           if t.user_attrs["metrics"]["feasible"]) or best["tie"]
    for t in done:
        folder = Path(t.user_attrs["notebook"]).parent
        assert (folder / "trial.ipynb").exists() and (folder / "monitor.csv").exists()
        assert (folder / "server.log").exists()
        m = t.user_attrs["metrics"]
        assert m["params"]["scenario"] == "server" and m["points"]
        assert m.get("accuracy_under_load_matches_offline", True)
    # baselines stay in-process (size and accuracy references)
    base = json.loads(next((run_dir / "baselines").glob("onnxruntime-*/metrics.json")).read_text())
    assert base["params"]["scenario"] == "single_stream" and "latency_p50_ci_low_ms" in base
    df = pd.read_csv(run_dir / "results.csv")
    trials = df[df.kind == "trial"]
    assert trials.max_qps_at_slo.notna().all() and set(trials.max_batch_size) == {1, 8}
    assert trials.load_valid.notna().all()  # every server trial says whether its load run was valid
    assert (trials.load_invalid_reason.notna() == ~trials.load_valid.astype(bool)).all()
    assert isinstance(best["load_valid"], bool) and best["load_runs"]
    md = (run_dir / "report.md").read_text()
    assert "max_qps_at_slo" in md and "QPS within the SLO" in md and f"- load runs: {best['load_runs']}" in md
    html = (run_dir / "report.html").read_text()
    for name in ("serve_latency_load.png", "serve_throughput_p99.png", f"serve_monitor_{best['trial']}.png"):
        assert (run_dir / name).stat().st_size > 0
    for title in ("Accuracy vs max QPS at the SLO", "Latency at the SLO percentile vs offered load",
                  "Achieved throughput vs p99",
                  f"Monitor of trial {best['trial']}"):
        assert title in html


@pytest.mark.slow
def test_sigkill_mid_server_trial_then_resume_leaves_no_server(tmp_path):
    exp_path = tmp_path / "server.yaml"
    exp_path.write_text(SERVER_YAML.read_text())
    run_dir = tmp_path / "runs" / "server" / "server"
    cmd = [str(Path(sys.executable).parent / "workbench"), "sweep", str(exp_path),
           "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ours: set[int] = set()
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until trial 1 is serving under load
            time.sleep(0.3)
            if (run_dir / "trials" / "1" / "monitor.csv").exists():
                ours = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
                if _servers(tmp_path):
                    break
        else:
            pytest.fail("the sweep never served trial 1")
        served = {p.pid for p in _servers(tmp_path)}
        assert served
        ours |= served
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = _gone(ours)  # the kernel follows its parent, the server its kernel
    assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    assert not _listening(served)

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not _servers(tmp_path)
    st = optuna.load_study(study_name="server", storage=open_storage(f"sqlite:///{run_dir / 'study.db'}"))
    assert st.trials[1].state.name == "FAIL" and "interrupted" in st.trials[1].user_attrs
    assert sum(t.state.name == "COMPLETE" for t in st.trials) == 4
    assert json.loads((run_dir / "best.json").read_text())["trial"] is not None
