"""environment.yml installs the same packages, with the same ranges, as pyproject.toml."""

import re
import tomllib

import yaml
from conftest import ROOT


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_norm(r) for r in pip} == wanted
    assert "python=3.11" in env["dependencies"]


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_trial_notebook_parameters_match_trial_params():
    from papermill.inspection import inspect_notebook

    from workbench.config.params import TrialParams
    from workbench.sweep.notebook import TRIAL_NOTEBOOK

    names = set(inspect_notebook(str(TRIAL_NOTEBOOK)))  # fields + registered parameters
    assert names == set(TrialParams().model_dump()) | {"metrics_path"}
    assert {"bits", "sparsity", "graph_optimization"} <= names
