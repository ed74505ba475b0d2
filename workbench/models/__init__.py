"""Models: the builtin ones (trained here, offline) and the user's (.keras, SavedModel, .onnx),
each prepared once into a content-addressed model directory (``modeldir``: :class:`ModelRef`).
"""

from workbench.models.builtin import BUILTIN, resolve
from workbench.models.modeldir import ModelRef, accuracy, quality, save

__all__ = ["BUILTIN", "ModelRef", "accuracy", "quality", "resolve", "save"]
