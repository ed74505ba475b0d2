"""Keras / SavedModel -> fp32 ONNX (``export.py``), for runtimes that read ONNX. A user ONNX
model is its own fp32 artifact (checked when it was loaded)."""

from __future__ import annotations

from workbench.core import cache
from workbench.models import ModelRef
from workbench.variants import Artifact, Transform, export, register

ONNX_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxconverter-common")


def onnx_fp32(model: ModelRef, data) -> Artifact:
    if model.format == "onnx":
        return Artifact(model.onnx_path, "onnx", model.key, ())
    k = cache.key("onnx-fp32", model.key, export.OPSET, cache.versions(*ONNX_PACKAGES))
    d = cache.entry("artifacts", k, lambda out: export.to_onnx(model, data, out / "model.onnx"))
    return Artifact(d / "model.onnx", "onnx", k, ("export:onnx",))


class OnnxExport(Transform):
    name = "export:onnx"

    def applies(self, state, params, formats) -> bool:
        return isinstance(state, ModelRef) and "onnx" in formats

    def apply(self, state, data, params, calibration_samples) -> Artifact:
        art = onnx_fp32(state, data)
        prefix = tuple(state.meta.get("transforms", ()))
        return Artifact(art.path, art.format, art.key, prefix + art.transforms)


TRANSFORM = register(OnnxExport())
