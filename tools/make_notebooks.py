"""Regenerate the committed notebooks (stripped of outputs) from this one source.

Run ``python tools/make_notebooks.py`` after changing a notebook's cells; the test suite checks
that the parameters cell of trial.ipynb matches :class:`workbench.config.params.TrialParams`.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from workbench.config.params import TrialParams

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
    # TrialParams' own fields, then every parameter a runtime or variant transform declares
    lines = [f"{k} = {v!r}" for k, v in TrialParams().model_dump().items()]
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
            "from workbench import trial\n"
            "from workbench.config import TrialParams\n\n"
            "# The parameters above, by name: TrialParams' fields and every parameter a runtime or\n"
            "# variant declares (one of a plug-in not in the cell above keeps its default).\n"
            "names = TrialParams().model_dump()\n"
            "metrics = trial.run({name: value for name, value in globals().items() if name in names})\n"
            "trial.write_metrics(metrics, metrics_path)\n"
            "trial.Summary(metrics)  # the metrics as a table, or why the trial was pruned"),
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
            "from workbench import config, sweep\n"
            "from workbench.results.table import load_table, summary_columns\n\n"
            "exp = config.load(experiment)\n"
            "exp.n_trials = n_trials\n"
            "exp.measurement.min_seconds = min_seconds\n"
            "run_dir = sweep.run(exp, study_name=study, runs_dir=runs_dir, fresh=True)\n"
            "run_dir"),
        new_markdown_cell("## Every trial, with the baselines\n\n`feasible` means the accuracy drop "
                          "is within `max_accuracy_drop`; `pareto` marks the trade-off front."),
        new_code_cell("table = load_table(run_dir)\n"
                      "table[summary_columns(table)]"),
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
            "import json\nfrom pathlib import Path\n\nfrom workbench import report\n"
            "from workbench.report import plots\n"
            "from workbench.results.rundir import latest_run_dir\n"
            "from workbench.results.table import load_table\n\n"
            "run_dir = Path(run_dir) if run_dir else latest_run_dir('../experiments/runs')\n"
            "paths = report.build(run_dir)\n"
            "table = load_table(run_dir)\n"
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
        new_code_cell("for name, title in plots.PLOTS:  # the ones this run has (one batch size: no latency vs batch)\n"
                      "    if name.removesuffix('.png') in paths:\n"
                      "        print(title)\n"
                      "        display(Image(filename=str(paths[name.removesuffix('.png')])))"),
    ])


def serving_nb() -> None:
    save("serving.ipynb", [
        new_markdown_cell(
            "# Serving a model under load\n\n"
            "Serves one variant with the builtin engine (Starlette/uvicorn + dynamic batcher, Open\n"
            "Inference Protocol v2 on 127.0.0.1), drives it with the open-loop load generator at a few\n"
            "offered rates while the 1 Hz monitor samples the server, and plots latency against load\n"
            "and the time series on one time axis. The same as\n\n"
            "```\nworkbench serve BUNDLE --max-batch-size 8 &\n"
            "workbench load http://127.0.0.1:8000/v2/models/model/infer --rate 200 --duration 3\n```\n\n"
            "The server runs in its own process group and is always stopped at the end of the cell\n"
            "(and exits by itself if this kernel dies)."),
        params_cell("model = 'digits_cnn'\ndata = 'digits'\nmax_batch_size = 8\nmax_queue_delay_ms = 2.0\n"
                    "batch_policy = 'idle'\nrates = [50.0, 200.0, 800.0]\nseconds = 2.0"),
        new_code_cell(
            "import tempfile\nfrom pathlib import Path\n\n"
            "from workbench.config import TrialParams\n"
            "from workbench.export.bundle import write_bundle\n"
            "from workbench.measure.monitor import Monitor\n"
            "from workbench.serve import ServeOptions, engine, free_port, load\n"
            "from workbench.variants import artifact_for\n\n"
            "p = TrialParams.parse({'model': model, 'data': data})\n"
            "ds, _, artifact = artifact_for(p)\n"
            "work = Path(tempfile.mkdtemp(prefix='serving-'))\n"
            "bundle = write_bundle(work / 'bundle', p, artifact, ds)\n"
            "items = load.payloads(ds.x_eval, ds.y_eval)\n"
            "eng = engine('builtin', bundle, ServeOptions(port=free_port(), max_batch_size=max_batch_size,\n"
            "                                             max_queue_delay_ms=max_queue_delay_ms,\n"
            "                                             batch_policy=batch_policy))\n"
            "eng.start(log=work / 'server.log')\n"
            "results = []\n"
            "try:\n"
            "    eng.wait_ready(120)\n"
            "    with Monitor(work / 'monitor.csv', eng.proc.pid, eng.metrics) as mon:\n"
            "        for rate in rates:\n"
            "            mon.offered = rate\n"
            "            results.append(load.run(eng.infer_url, rate=rate, duration=seconds, items=items))\n"
            "            print(load.render(results[-1]), end='\\n\\n')\n"
            "    server_metrics = eng.metrics()\n"
            "finally:\n"
            "    eng.stop()\n"
            "mean_batch = server_metrics['workbench_batch_size_sum'] / server_metrics['workbench_batch_size_count']\n"
            "print(f'mean batch size {mean_batch:.2f}; accuracy of the answers '\n"
            "      f\"{results[-1].get('accuracy', float('nan')):.2f}% (offline: the same answers, exactly)\")"),
        new_markdown_cell("## Latency against offered load\n\nMeasured from each request's scheduled "
                          "send time, so queueing in the server *and* in the client counts."),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
            "for q in ('p50', 'p90', 'p99'):\n"
            "    ax.plot([r['offered_qps'] for r in results], [r[f'{q}_ms'] for r in results], 'o-', label=q)\n"
            "ax.set_xlabel('offered QPS'); ax.set_ylabel('latency (ms)'); ax.set_yscale('log'); ax.legend()\n"
            "ax.set_title(f'{p.describe()}, max batch {max_batch_size}, policy {batch_policy}')\n"
            "plt.show()"),
        new_markdown_cell("## The monitor's time series (`monitor.csv`, 1 Hz)"),
        new_code_cell(
            "import pandas as pd\n\n"
            "mon_df = pd.read_csv(work / 'monitor.csv')\n"
            "cols = ['offered_qps', 'answered_qps', 'p99_ms', 'server_cpu_pct', 'queue_depth', 'batch_mean']\n"
            "fig, axes = plt.subplots(len(cols), 1, sharex=True, figsize=(7, 1.4 * len(cols)))\n"
            "for ax, c in zip(axes, cols):\n"
            "    ax.plot(mon_df['t_s'], pd.to_numeric(mon_df[c], errors='coerce'), '.-')\n"
            "    ax.set_ylabel(c, rotation=0, ha='right')\n"
            "axes[-1].set_xlabel('seconds')\n"
            "plt.show()\n"
            "mon_df.tail()"),
    ])


if __name__ == "__main__":
    trial()
    quickstart()
    report_nb()
    serving_nb()
