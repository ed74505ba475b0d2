"""Magnitude pruning + fine-tune of a Keras model (``prune.py``), unstructured or by channels.

Applies when ``sparsity`` > 0 to a model on its way to another format; a runtime that reads
Keras files itself runs the Keras model as it is (the TensorFlow baseline). A model that is not
Keras cannot be pruned: the trial is pruned with that reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench import models
from workbench.core import cache
from workbench.core.errors import TrialPruned
from workbench.core.parameter import Parameter
from workbench.data import Dataset
from workbench.models import ModelRef
from workbench.variants import Transform, register
from workbench.variants.prune import magnitude

PRUNE_PACKAGES = ("tensorflow", "keras")


def _on(p) -> bool:
    return float(p.get("sparsity", 0)) > 0


def label(params) -> str:
    kind = "channels" if params.prune_structure == "channels" else "unstructured"
    return f"prune:{kind}:{params.sparsity:g}"


def pruned(model: ModelRef, data: Dataset, params) -> ModelRef:
    """The pruned and fine-tuned Keras model (cached like any artifact)."""
    if model.meta.get("format", "keras") != "keras":
        raise TrialPruned(f"pruning needs a Keras model; {model.name} is {model.meta['format']}")
    if params.finetune_epochs and data.x_train is None:
        raise TrialPruned("pruning fine-tune needs x_train/y_train in the data set "
                          "(or finetune_epochs: 0)")
    recipe = {"sparsity": params.sparsity, "structure": params.prune_structure,
              "finetune_epochs": params.finetune_epochs, "seed": params.seed}
    k = cache.key("pruned", model.key, recipe, cache.versions(*PRUNE_PACKAGES))

    def build_pruned(out: Path) -> None:
        original = model.load_keras()
        fn = magnitude.prune_channels if params.prune_structure == "channels" else magnitude.prune_unstructured
        result = fn(original, data.x_train, data.y_train, params.sparsity, params.finetune_epochs,
                    seed=params.seed, loss=magnitude.LOSSES[data.task])  # regression: MSE
        models.save(result, data, out, source_params=int(original.count_params()),
                 kernel_sparsity=magnitude.kernel_sparsity(result), pruning=recipe)

    d = cache.entry("models", k, build_pruned)
    meta = json.loads((d / "meta.json").read_text())
    # the steps so far, carried in memory to the artifact's transforms (not written to meta.json)
    meta["transforms"] = [*model.meta.get("transforms", []), label(params)]
    return ModelRef(f"{model.name}+{label(params)}", k, d, meta)


class Prune(Transform):
    name = "prune"
    parameters = (
        Parameter("sparsity", 0.0, float, ge=0.0, le=0.95, must_apply=True,
                  help="fraction of weights (or channels) removed"),
        Parameter("prune_structure", "unstructured", str, choices=("unstructured", "channels"),
                  applies=_on),
        Parameter("finetune_epochs", 2, int, ge=0, applies=_on),
    )

    def applies(self, state, params, formats) -> bool:
        return (params.sparsity > 0 and isinstance(state, ModelRef)
                and (state.format != "keras" or "keras" not in formats))

    def apply(self, state, data, params, calibration_samples) -> ModelRef:
        return pruned(state, data, params)


TRANSFORM = register(Prune())
