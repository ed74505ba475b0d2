"""The transform interface, its registry, and the chain that builds one trial's artifact (see the package)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from workbench import data as data_mod
from workbench import models, runtimes
from workbench.core import plugins
from workbench.core.errors import TrialPruned
from workbench.core.parameter import Parameter
from workbench.data import Dataset
from workbench.models import ModelRef

# The transforms shipped with workbench, in the order build() tries them.
TRANSFORM_MODULES = [
    "workbench.variants.distill",
    "workbench.variants.prune.transform",
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


def build(model: ModelRef, data: Dataset, params, calibration_samples: int) -> Artifact:
    """The artifact for one trial's parameters (built once, then read from the cache)."""
    formats = runtimes.get(params.runtime).formats
    state: State = model
    applied: list[Transform] = []
    for t in registered():
        if t.applies(state, params, formats):
            state = t.apply(state, data, params, calibration_samples)
            applied.append(t)
    read = {p.name for t in applied for p in t.parameters}
    route = " -> ".join(t.name for t in applied) or "no transform"
    for p in (p for t in registered() for p in t.parameters):  # must_apply: a transform's own
        value = getattr(params, p.name, p.default)
        if p.must_apply and value != p.default and p.name not in read:
            raise TrialPruned(f"runtime {params.runtime}: {p.name}={value} is not applied by its "
                              f"variant route ({route}); it runs only the model as it is")
    if not isinstance(state, Artifact) or state.format not in formats:
        wanted = " or ".join(FORMAT_NAMES.get(f, f) for f in formats)
        raise TrialPruned(f"runtime {params.runtime} needs a {wanted} model; {model.name} is "
                          f"{model.format} and no variant route leads from it ({route})")
    return state


def artifact_for(p) -> tuple[Dataset, ModelRef, Artifact]:
    """Data, source model and the (cached) artifact of a trial's parameters (``TrialParams``):
    how a trial, a re-measurement or an export bundle opens what a trial measured."""
    data = data_mod.load(p.data, p.task)
    model = models.resolve(p.model, data, p.trust_model_code, p.output)
    return data, model, build(model, data, p, p.calibration_samples)
