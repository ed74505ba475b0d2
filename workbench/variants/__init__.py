"""One deployment configuration -> one artifact, by a chain of registered transforms.

A transform is one class (in its own module, listed in ``TRANSFORM_MODULES`` or in the
``WORKBENCH_PLUGINS`` environment variable) that declares its ``name``, the ``parameters`` it
reads (with their values, defaults and when they apply: the sweep does not sample a parameter
that does not apply), whether it applies to the current state, and ``apply``. :func:`build`
walks the registered transforms in order; each one that applies turns the state (the source
model, a derived model, or an artifact) into the next, caching its result by content hash under
its own recipe. The chain ends at an artifact in a format the trial's runtime reads.

A parameter declared ``must_apply`` (``bits``, ``sparsity``) with a value other than its default
that no applied transform reads prunes the trial with the reason: asking for int8 and measuring
fp32 would be a lie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from workbench import plugins
from workbench.data import Dataset
from workbench.errors import TrialPruned
from workbench.parameters import Parameter
from workbench.zoo import ModelRef

# The transforms shipped with workbench, in the order build() tries them.
TRANSFORM_MODULES = [
    "workbench.variants.distill",
    "workbench.variants.sparsity",
    "workbench.variants.native",
    "workbench.variants.tflite",
    "workbench.variants.onnx_export",
    "workbench.variants.quantize",
]
FORMAT_NAMES = {"keras": "Keras", "savedmodel": "SavedModel", "onnx": "ONNX", "tflite": "TFLite"}


@dataclass(frozen=True)
class Artifact:
    """A deployable file and what produced it."""

    path: Path
    format: str  # "onnx" | "keras" | "savedmodel" | "tflite" | a plug-in's
    key: str
    transforms: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


State = Union[ModelRef, Artifact]


class Transform:
    """A step from one state to the next. Subclass, set ``name``/``parameters``, implement
    :meth:`applies` and :meth:`apply`, and ``register()`` an instance."""

    name: str = ""
    parameters: tuple[Parameter, ...] = ()

    def applies(self, state: State, params, formats: tuple[str, ...]) -> bool:
        """Whether this step runs for ``params``, given the current state and the formats the
        trial's runtime reads."""
        raise NotImplementedError

    def apply(self, state: State, data: Dataset, params, calibration_samples: int) -> State:
        raise NotImplementedError


_REGISTRY: dict[str, Transform] = {}


def register(transform: Transform) -> Transform:
    """Add ``transform`` (after the ones registered before it); returns it."""
    if not transform.name:
        raise ValueError(f"{type(transform).__name__}: a transform needs a name")
    _REGISTRY[transform.name] = transform
    return transform


def registered() -> list[Transform]:
    """The registered transforms, in the order build() tries them: that of ``TRANSFORM_MODULES``
    (not of imports: a module may import another's parameters), then any others as registered."""
    plugins.import_modules(TRANSFORM_MODULES)
    rank = {m: i for i, m in enumerate(TRANSFORM_MODULES)}
    ts = list(_REGISTRY.values())
    return sorted(ts, key=lambda t: (rank.get(type(t).__module__, len(rank)), ts.index(t)))


def build(model: ModelRef, data: Dataset, params: "TrialParams", calibration_samples: int) -> Artifact:  # noqa: F821
    """The artifact for one trial's parameters (built once, then read from the cache)."""
    from workbench import runtimes
    from workbench import parameters as space

    formats = runtimes.get(params.runtime).formats
    state: State = model
    applied: list[Transform] = []
    for t in registered():
        if t.applies(state, params, formats):
            state = t.apply(state, data, params, calibration_samples)
            applied.append(t)
    read = {p.name for t in applied for p in t.parameters}
    route = " -> ".join(t.name for t in applied) or "no transform"
    for p in space.parameters().values():
        value = getattr(params, p.name, p.default)
        if p.must_apply and value != p.default and p.name not in read:
            raise TrialPruned(f"runtime {params.runtime}: {p.name}={value} is not applied by its "
                              f"variant route ({route}); it runs only the model as it is")
    if not isinstance(state, Artifact) or state.format not in formats:
        wanted = " or ".join(FORMAT_NAMES.get(f, f) for f in formats)
        raise TrialPruned(f"runtime {params.runtime} needs a {wanted} model; {model.name} is "
                          f"{model.format} and no variant route leads from it ({route})")
    return state


def pruned(model: ModelRef, data: Dataset, params) -> ModelRef:
    """The pruned and fine-tuned Keras model (cached like any artifact)."""
    from workbench.variants import sparsity

    return sparsity.pruned(model, data, params)


def _onnx_fp32(model: ModelRef, data: Dataset) -> Artifact:
    from workbench.variants import onnx_export

    return onnx_export.onnx_fp32(model, data)
