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
from workbench.zoo import ModelRef

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

    k = cache.key("onnx-fp32", model.key, export.OPSET, cache.versions(*ONNX_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: export.to_onnx(model, data, out / "model.onnx"))
    return Artifact(d / "model.onnx", "onnx", k, ("export:onnx",))


def build(model: ModelRef, data: Dataset, params: "TrialParams", calibration_samples: int) -> Artifact:  # noqa: F821
    """The artifact for one trial's parameters (built once, then read from the cache)."""
    if params.runtime == "tensorflow":
        if params.bits != 32 or params.sparsity > 0:
            raise TrialPruned("runtime tensorflow runs only the unmodified fp32 Keras model "
                              f"(asked bits={params.bits}, sparsity={params.sparsity})")
        return Artifact(model.keras_path, "keras", model.key, ())
    if params.sparsity > 0:
        raise TrialPruned(f"sparsity {params.sparsity}: pruning is not built yet (only 0.0 is supported)")
    if params.runtime not in ("onnxruntime", "openvino"):
        raise TrialPruned(f"runtime {params.runtime} is not supported yet")
    base = _onnx_fp32(model, data)
    if params.bits == 32:
        return base

    from workbench.variants import quantize

    recipe = quantize.recipe(params, calibration_samples)
    k = cache.key("quantize", base.key, recipe, cache.versions(*ONNX_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: quantize.apply(base.path, out / "model.onnx", recipe, data))
    return Artifact(d / "model.onnx", "onnx", k, base.transforms + (quantize.describe(recipe),))
