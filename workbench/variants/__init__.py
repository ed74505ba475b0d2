"""One deployment configuration -> one artifact.

:func:`build` chains the transforms a configuration asks for (export, then quantization) and
caches every intermediate artifact by content hash, so the fp32 export is shared by all of its
quantized variants and TensorFlow is imported only when something must be exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench import cache
from workbench.data import Dataset
from workbench.errors import TrialPruned
from workbench.modeldir import ModelRef

PRUNE_PACKAGES = ("tensorflow", "keras")
TFLITE_PACKAGES = ("tensorflow", "keras", "ai-edge-litert")

ONNX_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxconverter-common")


@dataclass(frozen=True)
class Artifact:
    """A deployable file and what produced it."""

    path: Path
    format: str  # "onnx" | "keras"
    key: str
    transforms: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _onnx_fp32(model: ModelRef, data: Dataset) -> Artifact:
    from workbench.variants import export

    if model.format == "onnx":  # a user ONNX model is its own fp32 artifact (checked by zoo)
        return Artifact(model.onnx_path, "onnx", model.key, ())
    k = cache.key("onnx-fp32", model.key, export.OPSET, cache.versions(*ONNX_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: export.to_onnx(model, data, out / "model.onnx"))
    return Artifact(d / "model.onnx", "onnx", k, ("export:onnx",))


def _prune_label(params) -> str:
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
        from workbench import zoo
        from workbench.variants import prune

        original = model.load_keras()
        loss = prune.LOSSES[data.task]  # regression fine-tunes on MSE
        if params.prune_structure == "channels":
            result = prune.prune_channels(original, data.x_train, data.y_train, params.sparsity,
                                          params.finetune_epochs, seed=params.seed, loss=loss)
        else:
            result = prune.prune_unstructured(original, data.x_train, data.y_train, params.sparsity,
                                              params.finetune_epochs, seed=params.seed, loss=loss)
        zoo.save(result, data, out, source_params=int(original.count_params()),
                 kernel_sparsity=prune.kernel_sparsity(result), pruning=recipe)

    d = cache.entry("models", k, build_pruned)
    import json

    return ModelRef(f"{model.name}+{_prune_label(params)}", k, d, json.loads((d / "meta.json").read_text()))


def _tflite(source: ModelRef, data: Dataset, params, calibration_samples: int) -> Artifact:
    if source.meta.get("format", "keras") != "keras":
        raise TrialPruned(f"the TFLite route needs a Keras model; {source.name} is {source.meta['format']}")
    from workbench.variants import tflite

    r = tflite.recipe(params, calibration_samples)
    k = cache.key("tflite", source.key, r, cache.versions(*TFLITE_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: tflite.convert(source, data, out / "model.tflite", r))
    prefix = (_prune_label(params),) if params.sparsity > 0 else ()
    return Artifact(d / "model.tflite", "tflite", k, prefix + ("export:savedmodel", tflite.describe(r)))


def build(model: ModelRef, data: Dataset, params: "TrialParams", calibration_samples: int) -> Artifact:  # noqa: F821
    """The artifact for one trial's parameters (built once, then read from the cache)."""
    from workbench.variants import distill

    distilling = distill.applies(params)
    if distilling:  # the student replaces the teacher from here on; its key carries the recipe
        model = distill.distilled(model, data, params)
    if params.runtime == "tensorflow":
        if params.bits != 32 or params.sparsity > 0:
            raise TrialPruned("runtime tensorflow runs only the unmodified fp32 Keras model "
                              f"(asked bits={params.bits}, sparsity={params.sparsity})")
        if distilling:
            return Artifact(model.keras_path, "keras", model.key, (distill.label(params),))
        if model.format == "onnx":
            raise TrialPruned(f"runtime tensorflow needs a Keras or SavedModel model; {model.name} is onnx")
        if model.format == "savedmodel":
            return Artifact(model.saved_model_path, "savedmodel", model.key, ())
        return Artifact(model.keras_path, "keras", model.key, ())
    source = pruned(model, data, params) if params.sparsity > 0 else model
    if params.runtime == "litert":
        art = _tflite(source, data, params, calibration_samples)
        if distilling:
            art = Artifact(art.path, art.format, art.key, (distill.label(params),) + art.transforms)
        return art
    base = _onnx_fp32(source, data)
    if params.sparsity > 0:
        base = Artifact(base.path, base.format, base.key, (_prune_label(params),) + base.transforms)
    if distilling:
        base = Artifact(base.path, base.format, base.key, (distill.label(params),) + base.transforms)
    if params.bits == 32:
        return base

    from workbench.variants import quantize

    recipe = quantize.recipe(params, calibration_samples)
    k = cache.key("quantize", base.key, recipe, cache.versions(*ONNX_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: quantize.apply(base.path, out / "model.onnx", recipe, data))
    return Artifact(d / "model.onnx", "onnx", k, base.transforms + (quantize.describe(recipe),))
