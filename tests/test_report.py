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
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from workbench import bundle, config, report, sweep

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
    assert bundle.export(run_dir, trial=0, out=tmp_path / "t0").joinpath("predict.py").exists()
    bad = run_cli("export", str(run_dir), "--trial", "99")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "no trial 99" in bad.stderr


@pytest.mark.slow
def test_overlapping_candidates_are_remeasured_interleaved(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    df = report.load_table(copy, extras=True)
    trials = df[(df.kind == "trial") & (df.state == "COMPLETE")]
    pick = list(trials.trial[:2])
    for t in pick:  # make their sweep CIs overlap, whatever was measured
        i = df.index[df.trial == t][0]
        df.loc[i, ["latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms"]] = [1.0, 0.5, 1.5]
        df.loc[i, "batch_size"] = 1
    df = df[(df.kind == "baseline") | df.trial.isin(pick)]
    t0 = time.perf_counter()
    best = report.recommend(df, copy, remeasure=True)
    assert time.perf_counter() - t0 < 30
    assert best["decided_by"] == "interleaved re-measurement", best["reason"]
    res = best["interleaved"]["results"]
    assert [r["trial"] for r in res] == pick and all(r["n_runs"] >= 20 for r in res)
    assert best["trial"] in pick and ("tie" in best["reason"]) == best["tie"]
    # Rebuilding the report reuses the recorded interleaved numbers.
    t0 = time.perf_counter()
    again = report.recommend(df, copy, remeasure=True)
    assert again["interleaved"] == best["interleaved"] and time.perf_counter() - t0 < 2


def _synthetic(rows):
    cols = {c: None for c in report.COLUMNS + report.EXTRA_COLUMNS}
    out = []
    for i, r in enumerate(rows):
        out.append({**cols, "trial": str(i), "kind": "trial", "state": "COMPLETE", "label": f"t{i}",
                    "feasible": True, "hardware_id": "h", "batch_size": 1, "sparsity": 0.0, **r})
    return pd.DataFrame(out)


def test_recommend_fastest_when_cis_are_apart():
    df = _synthetic([
        dict(bits=32, latency_p50_ms=1.0, latency_p50_ci_low_ms=0.98, latency_p50_ci_high_ms=1.02, size_bytes=400),
        dict(bits=8, latency_p50_ms=2.0, latency_p50_ci_low_ms=1.95, latency_p50_ci_high_ms=2.05, size_bytes=100),
    ])
    best = report.recommend(df)
    assert best["trial"] == "0" and not best["tie"] and best["decided_by"] == "sweep measurements"


def test_recommend_tie_goes_to_smallest_simplest():
    df = _synthetic([
        dict(bits=32, latency_p50_ms=1.0, latency_p50_ci_low_ms=0.9, latency_p50_ci_high_ms=1.1, size_bytes=400),
        dict(bits=8, latency_p50_ms=1.05, latency_p50_ci_low_ms=0.95, latency_p50_ci_high_ms=1.15, size_bytes=100),
        dict(bits=16, latency_p50_ms=3.0, latency_p50_ci_low_ms=2.9, latency_p50_ci_high_ms=3.1, size_bytes=50),
    ])
    best = report.recommend(df)  # no run_dir: decided on the sweep's numbers
    assert best["trial"] == "1" and best["tie"] and best["tied_with"] == ["0"]
    assert best["reason"].startswith("tie")


def test_recommend_within_margin_is_a_tie_even_with_tight_cis():
    df = _synthetic([
        dict(bits=32, latency_p50_ms=1.000, latency_p50_ci_low_ms=0.999, latency_p50_ci_high_ms=1.001, size_bytes=400),
        dict(bits=8, latency_p50_ms=1.010, latency_p50_ci_low_ms=1.009, latency_p50_ci_high_ms=1.011, size_bytes=100),
    ])
    assert report.recommend(df)["trial"] == "1"
