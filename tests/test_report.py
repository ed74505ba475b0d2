"""The report of a real small sweep: report.html (parsed and rendered in headless Chromium),
report.md/results.csv, the recommendation (incl. interleaved re-measurement) and the export bundle."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from workbench import config, sweep
from workbench.export import run
from workbench.results import rundir, table

CHROMIUM = Path("/usr/bin/chromium")


class _Collect(HTMLParser):
    """Images, external references and the rows of the all-trials table."""

    def __init__(self):
        super().__init__()
        self.images, self.external, self.rows, self.headers = [], [], 0, []
        self._in_all = self._in_body = self._in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link", "img", "iframe") and any(
                str(a.get(k, "")).startswith(("http:", "https:", "//")) for k in ("src", "href")):
            self.external.append((tag, a))
        if tag == "link":
            self.external.append((tag, a))
        if tag == "table" and a.get("id") == "all-trials":
            self._in_all = True
        if self._in_all and tag == "thead":
            self._in_head = True
        if self._in_all and tag == "tbody":
            self._in_body = True
        if self._in_body and tag == "tr":
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_all = self._in_body = self._in_head = False
        if tag == "thead":
            self._in_head = False

    def handle_data(self, data):
        if self._in_head and data.strip():
            self.headers.append(data.strip())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real 3-trial sweep (grid, tiny measurement budget) with baselines at batch 1 and 4."""
    tmp = tmp_path_factory.mktemp("report")
    exp_path = tmp / "tiny.yaml"
    exp_path.write_text("\n".join([
        "name: tiny", "sampler: grid", "n_trials: 3", "max_accuracy_drop: 1.0",
        "measurement: {warmup: 2, min_runs: 20, min_seconds: 0.05, max_seconds: 2}",
        "search_space:", "  bits: [32, 8]", "  batch_size: [1, 4]", "  threads: 1"]) + "\n")
    return sweep.run(config.load(exp_path), runs_dir=tmp / "runs", progress=False)


def _png_ok(data: bytes) -> None:
    import matplotlib.image as mpimg

    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.size > 0 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10


@pytest.mark.slow
def test_html_report_is_self_contained_with_plots_and_every_trial(run_dir):
    text = (run_dir / "report.html").read_text()
    parser = _Collect()
    parser.feed(text)
    assert not parser.external
    assert len(parser.images) == 5
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        _png_ok(base64.b64decode(src.split(",", 1)[1]))
    df = pd.read_csv(run_dir / "results.csv")
    n_trials = (df.kind == "trial").sum()
    assert n_trials == 3
    assert parser.rows == len(df)  # every trial and baseline, one row each
    assert parser.headers[:4] == ["trial", "kind", "state", "label"]
    best = json.loads((run_dir / "best.json").read_text())
    assert f"trial {best['trial']}" in text and "speed-up" in text and "<script>" in text
    assert "Xeon" in text or json.loads((run_dir / "environment.json").read_text())["cpu"]["model"] in text


@pytest.mark.slow
def test_markdown_and_csv_carry_the_same_full_table(run_dir):
    md = (run_dir / "report.md").read_text()
    df = pd.read_csv(run_dir / "results.csv")
    full = md.split("## All columns", 1)[1]
    header = next(line for line in full.splitlines() if line.startswith("| trial"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == list(df.columns)
    for c in ("latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "latency_cv", "unstable",
              "max_abs_diff", "top1_agreement", "peak_rss_mb", "load_ms"):
        assert c in cols
    body = [ln for ln in full.splitlines() if ln.startswith("| ") and not ln.startswith(("| trial", "| ---"))]
    assert len(body) == len(df)
    best = json.loads((run_dir / "best.json").read_text())
    s = best["summary"]
    assert s["speedup_vs_keras_fp32"][1] <= s["speedup_vs_keras_fp32"][0] <= s["speedup_vs_keras_fp32"][2]
    assert s["size_reduction_vs_keras_fp32"] > 1 and s["eval_samples"] > 100
    assert best["decided_by"] in ("sweep measurements", "interleaved re-measurement")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI: /usr/bin/chromium is missing (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium); CI runs this test")
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
           f"--screenshot={shot}", "--window-size=1280,2000", (run_dir / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    colors = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 200  # text, tables and plots, not a blank or error page


@pytest.mark.slow
def test_export_bundle_predicts_in_a_subprocess(run_dir, tmp_path):
    result = run_cli("export", str(run_dir), "--out", str(tmp_path / "bundle"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "bundle"
    best = json.loads((run_dir / "best.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert cfg["bits"] == best["params"]["bits"] and cfg["batch_size"] == best["params"]["batch_size"]
    assert metrics["label"] == best["label"]
    assert (out / "model.onnx").stat().st_size == metrics["size_bytes"]
    proc = subprocess.run([sys.executable, "predict.py", "sample_input.npy", "--out", "y.npy"],
                          cwd=out, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    y = np.load(out / "y.npy")
    assert y.shape == (cfg["batch_size"], 10) and np.isfinite(y).all()
    assert "top-1" in proc.stdout
    # An explicit trial, and a one-line error for one that does not exist.
    assert run.export(run_dir, trial=0, out=tmp_path / "t0").joinpath("predict.py").exists()
    bad = run_cli("export", str(run_dir), "--trial", "99")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "no trial 99" in bad.stderr


@pytest.mark.slow
def test_best_json_answers_the_scenario_question_among_the_candidates(run_dir):
    best = json.loads((run_dir / "best.json").read_text())
    assert best["scenario"] == "single_stream" and best["primary_metric"] == "latency_p90_ms"
    assert best["question"].startswith("single_stream: lowest p90 latency at batch 1")
    df = pd.read_csv(run_dir / "results.csv")
    row = df[df.trial.astype(str) == best["trial"]].iloc[0]  # a trial, or the fp32 baseline kept
    assert row.batch_size == 1 and bool(row.feasible)
    # on the front, or within the sweep's noise of the best (choose.candidates), or the baseline kept
    assert best["trial"] in best["candidates"] or best.get("keep_baseline")
    assert best["question"] in (run_dir / "report.md").read_text()
    if len(best["candidates"]) > 1:  # leaders are always re-measured together, with the fastest baseline
        inter = best["interleaved"]
        assert best["decided_by"] == "interleaved re-measurement", best["reason"]
        assert inter["n_rounds"] >= 5 and set(inter["rounds"]) - {best.get("baseline")} == set(best["candidates"])
        assert inter["hardware_id"] == best["hardware_id"]


@pytest.mark.slow
def test_leaders_are_remeasured_in_rotating_rounds_and_cached(run_dir, tmp_path):
    from workbench.decision import remeasure, stats

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / remeasure.REMEASURE_FILE).unlink(missing_ok=True)
    info = rundir.run_info(copy)
    df = table.load_table(copy, extras=True)
    lead = df[(df.kind == "trial") & (df.state == "COMPLETE") & (df.batch_size == 1)].head(2)
    assert len(lead) == 2
    inter = remeasure.remeasure_leaders(copy, lead, info, rounds=5, slot_seconds=0.05)
    names = [str(t) for t in lead.trial]
    n = inter["n_rounds"]  # 5, or more when the first 5 left a gap undecided
    assert n % 5 == 0 and n <= remeasure.MAX_ROUNDS and inter["processes"] == n // 5
    assert inter["orders"] == ([names, names[::-1]] * 2 + [names]) * (n // 5)
    assert all(len(inter["rounds"][t]) == n and min(inter["calls"][t]) >= 20 for t in names)
    assert all(v > 0 for t in names for v in inter["rounds"][t])
    got = stats.settle(inter["rounds"], "minimize")
    assert got["leader"] in names and got["leader"] in got["tied"]
    other = [t for t in names if t != got["leader"]][0]
    est, lo, hi = got["ratios"][other]["ratio"], *got["ratios"][other]["ci"]
    assert lo <= est <= hi and est >= 1.0  # the leader has the best geometric mean
    # Deciding again on the same candidates reuses the recorded rounds.
    stamp = (copy / remeasure.REMEASURE_FILE).stat().st_mtime_ns
    assert remeasure.remeasure_leaders(copy, lead, info, rounds=5, slot_seconds=0.05) == inter
    assert (copy / remeasure.REMEASURE_FILE).stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_report_renders_without_timing_or_trial_code(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "best.json").unlink()  # nobody decided: the report says so and decides nothing
    code = ("import sys, json; from workbench import report; report.build(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('workbench.'))))")
    proc = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in mods if m.startswith(("workbench.trial", "workbench.measure", "workbench.decision",
                                                 "workbench.serve"))]
    assert not (copy / "best.json").exists()  # best.json has one writer: workbench.decision
    assert "not decided yet" in (copy / "report.md").read_text().lower()

def test_recorded_quantiles_reach_the_latency_distribution_plot(tmp_path):
    """The 201 quantiles measure.timing records (a list) are kept by the table and drawn."""
    from workbench.measure import timing
    from workbench.report import plots

    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    times = timing.time_calls(lambda: x @ x, warmup=2, min_runs=50, min_seconds=0.01, max_seconds=1)
    metrics = {**timing.summarize(np.asarray(times), batch_size=1), "feasible": True, "label": "matmul"}
    row = table.make_row("trial", "0", "COMPLETE", {"batch_size": 1}, metrics, needed=["latency_p50_ms"])
    assert row["latency_quantiles_ms"] == metrics["latency_quantiles_ms"]
    df = pd.DataFrame([row])
    assert plots.latency_distributions(df, tmp_path / "latency_dist.png") == 1
    _png_ok((tmp_path / "latency_dist.png").read_bytes())


@pytest.mark.slow
def test_latency_distribution_plot_draws_the_sweeps_trials(run_dir, tmp_path):
    from workbench.report import plots

    df = table.load_table(run_dir, extras=True)
    top = plots.top_candidates(df)
    assert len(top) > 0
    assert plots.latency_distributions(df, tmp_path / "latency_dist.png") == len(top)


@pytest.mark.slow
def test_headline_states_the_asked_metric_and_how_to_deploy(run_dir, tmp_path):
    from workbench.report import plots

    best = json.loads((run_dir / "best.json").read_text())
    assert best["primary_metric"] == "latency_p90_ms"
    recommendation = (run_dir / "report.md").read_text().split("## Trials")[0]
    p90 = best["row"]["latency_p90_ms"]
    assert f"p90 latency {p90:.4g} ms per batch of 1" in recommendation
    assert f"`workbench export {run_dir} --out bundle`" in recommendation
    assert best["row"]["artifact"] and best["row"]["artifact"] in recommendation
    assert f"workbench export {run_dir} --out bundle" in (run_dir / "report.html").read_text()

    # latency vs batch: drawn for the two batch sizes measured, not for one
    full = table.load_table(run_dir, extras=True)
    assert "latency_batch.png" in plots.draw_all(full, tmp_path, ["accuracy"], 1.0)
    one = full[full.batch_size == 1]
    (tmp_path / "one").mkdir()
    assert "latency_batch.png" not in plots.draw_all(one, tmp_path / "one", ["accuracy"], 1.0)


def test_the_headline_speed_up_is_against_the_fp32_model_the_run_has(run_dir):
    from workbench.report.summary import speedup_text

    best = json.loads((run_dir / "best.json").read_text())
    row = best["row"]
    recommendation = (run_dir / "report.md").read_text().split("## Trials")[0]
    assert speedup_text(row) in recommendation and "nan" not in recommendation
    assert speedup_text(row) == f"speed-up vs Keras fp32 {row['speedup_vs_baseline']:.2f}x"
    # a model that exists only as ONNX has no Keras baseline (the table leaves that speed-up
    # empty): the headline compares with its own fp32 model, never "vs Keras nan x"
    onnx_only = {**row, "speedup_vs_baseline": None}
    assert speedup_text(onnx_only) == f"speed-up vs the fp32 model {row['speedup_vs_onnx_fp32']:.2f}x"
    assert "nan" not in speedup_text({**onnx_only, "speedup_vs_onnx_fp32": float("nan")})


def test_the_trials_table_of_an_onnx_only_model_shows_the_speed_up_it_has(run_dir):
    # no Keras baseline: the summary's speed-up column is the one against the fp32 ONNX model,
    # not an empty "vs Keras" column; with a Keras baseline, that one
    full = table.load_table(run_dir)
    assert "speedup_vs_baseline" in table.summary_columns(full)
    onnx_only = full[full.runtime != "tensorflow"].assign(speedup_vs_baseline=float("nan"))
    cols = table.summary_columns(onnx_only)
    assert "speedup_vs_onnx_fp32" in cols and "speedup_vs_baseline" not in cols
    assert onnx_only[cols]["speedup_vs_onnx_fp32"].notna().any()
