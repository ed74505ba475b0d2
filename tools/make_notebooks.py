"""Regenerate the committed notebooks (stripped of outputs) from this one source.

Run ``python tools/make_notebooks.py`` after changing a notebook's cells; the test suite checks
that the parameters cell of trial.ipynb matches :class:`workbench.params.TrialParams`.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from workbench.params import TrialParams

HERE = Path(__file__).resolve().parent.parent / "notebooks"


def params_cell(source: str):
    return new_code_cell(source, metadata={"tags": ["parameters"]})


def save(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name.split('.')[0]}-{i}"
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)


def trial() -> None:
    from workbench import parameters

    defaults = TrialParams()
    # the fixed fields, then every parameter a runtime or variant transform declares
    names = list(TrialParams.model_fields)
    names[2:2] = [n for n in parameters.parameters() if n not in TrialParams.model_fields]
    lines = [f"{k} = {getattr(defaults, k)!r}" for k in names]
    lines[lines.index("min_seconds = 1.0")] = "min_seconds = 0.2  # the quickstart default; sweeps pass the experiment's"
    save("trial.ipynb", [
        new_markdown_cell(
            "# One deployment trial\n\n"
            "Builds one deployment variant of the model (export, quantization), opens it in the\n"
            "requested runtime and measures accuracy on the whole eval split, latency\n"
            "(warm-up, then timed runs until both `min_runs` and `min_seconds`), throughput and\n"
            "size. The sweep runs this notebook once per trial with papermill; you can too:\n\n"
            "```\npapermill notebooks/trial.ipynb out.ipynb -p bits 8 -p batch_size 32\n```\n\n"
            "All logic lives in `workbench.trial.run`; this notebook only calls it and writes\n"
            "`metrics.json` beside itself."),
        params_cell("\n".join(lines + ['metrics_path = "metrics.json"'])),
        new_code_cell(
            "from workbench import trial\n\n"
            "params = dict(\n" + "".join(f"    {k}={k},\n" for k in names) + ")\n"
            "metrics = trial.run(params)\n"
            "trial.write_metrics(metrics, metrics_path)\n"
            "print(metrics['label'], '->', metrics['status'], metrics.get('reason', ''))"),
        new_code_cell(
            "# Plain text on purpose: importing pandas here would add ~0.5 s to every trial of a sweep.\n"
            "shown = ['accuracy', 'accuracy_drop', 'latency_p50_ms', 'latency_p90_ms', 'latency_p99_ms',\n"
            "         'latency_p50_ci_low_ms', 'latency_p50_ci_high_ms', 'latency_cv', 'throughput_sps',\n"
            "         'size_bytes', 'size_gzip_bytes', 'max_abs_diff', 'top1_agreement', 'load_ms', 'peak_rss_mb']\n"
            "for key in shown:\n"
            "    if key in metrics:\n"
            "        print(f'{key:>24}  {metrics[key]:.6g}')"),
    ])


def quickstart() -> None:
    save("quickstart.ipynb", [
        new_markdown_cell(
            "# Quickstart: which deployment of the digits CNN should I ship?\n\n"
            "A three-trial sweep of the built-in digits CNN. Each trial is a run of\n"
            "`notebooks/trial.ipynb` in a fresh kernel; the baseline rows are the unmodified Keras\n"
            "model in TensorFlow and its fp32 ONNX export in onnxruntime, measured the same way."),
        params_cell('experiment = "../experiments/digits.yaml"\nn_trials = 3\nmin_seconds = 0.2\n'
                    'runs_dir = "../experiments/runs"\nstudy = "quickstart"'),
        new_code_cell(
            "from workbench import config, report, sweep\n\n"
            "exp = config.load(experiment)\n"
            "exp.n_trials = n_trials\n"
            "exp.measurement.min_seconds = min_seconds\n"
            "run_dir = sweep.run(exp, study_name=study, runs_dir=runs_dir, fresh=True)\n"
            "run_dir"),
        new_markdown_cell("## Every trial, with the baselines\n\n`feasible` means the accuracy drop "
                          "is within `max_accuracy_drop`; `pareto` marks the trade-off front."),
        new_code_cell("table = report.load_table(run_dir)\n"
                      "table[report.summary_columns(table)]"),
        new_markdown_cell("## Accuracy against p90 latency"),
        new_code_cell("from IPython.display import Image\n\nImage(filename=str(run_dir / 'pareto.png'))"),
        new_markdown_cell("## The recommendation"),
        new_code_cell("import json\n\nprint(json.dumps(json.loads((run_dir / 'best.json').read_text()), indent=2))"),
    ])


def report_nb() -> None:
    save("report.ipynb", [
        new_markdown_cell(
            "# Report of a sweep\n\n"
            "Renders any run directory (`experiments/runs/<experiment>/<study>`). Set `run_dir`,\n"
            "or leave it empty to render the newest run under `experiments/runs` (run\n"
            "`quickstart.ipynb` or `make demo` first to have one). The same tables and plots as\n"
            "`report.html` in the run directory, which opens in a browser without a server."),
        params_cell('run_dir = ""'),
        new_code_cell(
            "import json\nfrom pathlib import Path\n\nfrom workbench import plots, report\n\n"
            "run_dir = Path(run_dir) if run_dir else report.latest_run_dir('../experiments/runs')\n"
            "paths = report.build(run_dir)\n"
            "table = report.load_table(run_dir)\n"
            "best = json.loads((run_dir / 'best.json').read_text())\n"
            "print(run_dir)"),
        new_markdown_cell("## Recommendation\n\nWhy it won, with intervals, against the baselines "
                          "at the same batch size."),
        new_code_cell("from IPython.display import Image, Markdown, display\n\n"
                      "Markdown((run_dir / 'report.md').read_text().split('## Trials')[0])"),
        new_markdown_cell("## All trials\n\nEvery column of `results.csv` (click a column in "
                          "JupyterLab's table viewer, or sort here with `table.sort_values`)."),
        new_code_cell("table.sort_values('latency_p50_ms')"),
        new_markdown_cell("## Plots"),
        new_code_cell("for name, title in plots.PLOTS:\n"
                      "    print(title)\n"
                      "    display(Image(filename=str(run_dir / name)))"),
    ])


if __name__ == "__main__":
    trial()
    quickstart()
    report_nb()
