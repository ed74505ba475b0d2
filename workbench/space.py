"""The search space: which parameters a trial gets, conditional parameters, and the grid.

``CONDITIONS`` (derived from the runtime and variant registries) says when a parameter means something (``int8_mode`` only at 8 bits, OpenVINO
options only for OpenVINO...): a parameter whose condition is false is neither sampled nor
enumerated, so two trials never differ only in a value that has no effect.
"""

from __future__ import annotations

from typing import Any

from workbench.config import Experiment, Range
from workbench.params import to_builtin

# When a parameter means something, declared by the plug-in that reads it (workbench.parameters).
from workbench.parameters import CONDITIONS  # noqa: E402


def grid_points(exp: Experiment) -> list[dict[str, Any]]:
    """Every distinct combination of the searched values, conditional parameters respected."""
    points: list[dict[str, Any]] = [{}]
    fixed = exp.search_space.fixed()
    for name, spec in exp.search_space:
        if not isinstance(spec, (list, Range)):
            continue
        values = spec.values() if isinstance(spec, Range) else spec
        grown = []
        for point in points:
            context = {**fixed, **point}
            if name in CONDITIONS and not CONDITIONS[name](context):
                grown.append(point)
            else:
                grown.extend({**point, name: v} for v in values)
        points = grown
    return points


def enqueue_next_grid_point(study, exp: Experiment) -> bool:
    """Enqueue the first grid point no trial has taken yet; False when the grid is done."""
    seen = [t.params or t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]
    for point in grid_points(exp):
        if point not in seen:
            study.enqueue_trial(point)
            return True
    return False


def suggest(trial, exp: Experiment) -> dict[str, Any]:
    """Trial parameters: searched ones from the sampler, fixed ones as written, all builtins."""
    params: dict[str, Any] = {}
    for name, spec in exp.search_space:
        if name in CONDITIONS and not CONDITIONS[name](params):
            continue
        if isinstance(spec, Range):
            if spec.is_int:
                params[name] = int(trial.suggest_int(name, int(spec.low), int(spec.high),
                                                     step=int(spec.step or 1), log=spec.log))
            else:
                params[name] = float(trial.suggest_float(name, spec.low, spec.high,
                                                         step=spec.step, log=spec.log))
        elif isinstance(spec, list):
            params[name] = to_builtin(trial.suggest_categorical(name, spec))
        else:
            params[name] = spec
    return params
