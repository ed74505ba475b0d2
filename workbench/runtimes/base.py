"""The runtime interface (Session, Runtime), its registry, and opening an artifact (see the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from workbench.core import errors, plugins
from workbench.core.cache import versions
from workbench.core.errors import TrialPruned
from workbench.core.parameter import CPU_ALIASES, Parameter

# The runtime modules shipped with workbench; each registers one Runtime when imported.
RUNTIME_MODULES = [
    "workbench.runtimes.ort",
    "workbench.runtimes.openvino",
    "workbench.runtimes.litert",
    "workbench.runtimes.tensorflow",
]


class Session(Protocol):
    providers: list[str]
    load_ms: float

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class Runtime:
    """What a runtime plug-in declares and does. Subclass it, set the attributes, implement
    :meth:`open_session` and :meth:`bundle_loader`, and ``register()`` an instance."""

    name: str = ""
    formats: tuple[str, ...] = ()
    # Providers/devices besides the CPU aliases (``CPU_ALIASES``: the runtime's default
    # CPU path). With more than one, ``provider`` is a searched parameter of this runtime.
    providers: tuple[str, ...] = ("CPU",)
    # The parameters this runtime reads besides runtime/provider/threads/batch_size; they apply
    # (are sampled, validated, recorded) only for trials of this runtime.
    options: tuple[Parameter, ...] = ()
    # Python distributions it needs: the doctor reports their versions, predict.py imports them.
    packages: tuple[str, ...] = ()

    def open_session(self, path: Path, params) -> Session:
        raise NotImplementedError

    def session_options(self, params) -> dict[str, Any]:
        """The exact options a session of ``params`` is opened with (JSON-serialisable): the
        Session and the exported ``predict.py`` both open the artifact from this dict."""
        return {"threads": params.threads}

    def bundle_loader(self, artifact: str) -> str:
        """The body of ``predict.py``'s ``load()``: open ``HERE / artifact`` with the dict
        ``OPTIONS`` (= :meth:`session_options`) and return a function batch -> outputs, the
        batch being one array or a dict of named arrays (match them to the model's inputs with
        ``by_runtime_names(x, names)``, which predict.py has). It may import only this
        runtime's own packages and numpy."""
        raise NotImplementedError

    def check_provider(self, params) -> str:
        """The provider/device to use; prunes the trial when this runtime does not have it."""
        if params.provider in CPU_ALIASES:
            return self.providers[0] if self.providers else "CPU"
        if params.provider not in self.providers:
            raise TrialPruned(f"runtime {self.name}: provider {params.provider} is not one of its "
                              f"providers ({', '.join(self.providers)})")
        return params.provider

    def doctor(self, context: dict[str, Any]) -> dict[str, Any]:
        """What ``workbench doctor`` reports: at least ``name``, ``version``, ``usable``, ``why``
        (and optionally ``providers``/``devices``/``delegates``: lists of name/usable/why).
        ``context``: ``gpu_present``, ``probe_tensorflow``. Never raises."""
        import importlib

        info = {"name": self.name, "version": _version(self.packages)}
        for pkg in self.packages:
            try:
                importlib.import_module(pkg.replace("-", "_"))
            except Exception as err:  # noqa: BLE001 - reported, not raised
                return {**info, "usable": False, "why": why_not(err)}
        return {**info, "usable": True, "why": None}

    def doctor_lines(self, info: dict[str, Any]) -> list[str]:
        """Extra lines under this runtime in ``workbench doctor``'s text report."""
        return []


def _version(packages: tuple[str, ...]) -> str:
    return versions(packages[0])[packages[0]] if packages else ""


def why_not(err: BaseException) -> str:
    """``Type: first line`` of an exception, for doctor's "why not" column."""
    line = errors.first_line(err, 200)
    return line if line == type(err).__name__ else f"{type(err).__name__}: {line}"


_REGISTRY: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to the registry (a module calls this when imported); returns it."""
    if not runtime.name or not runtime.formats:
        raise ValueError(f"{type(runtime).__name__}: a runtime needs a name and formats")
    _REGISTRY[runtime.name] = runtime
    return runtime


def registered() -> dict[str, Runtime]:
    """Every registered runtime by name, in registration order (imports the plug-in modules)."""
    plugins.import_modules(RUNTIME_MODULES)
    return dict(_REGISTRY)


def get(name: str) -> Runtime:
    rts = registered()
    if name not in rts:
        raise TrialPruned(f"runtime {name} is not available in this build of workbench")
    return rts[name]


def load(params, artifact) -> Session:
    """Open ``artifact`` in the runtime the trial asks for, with its threads and provider."""
    rt = get(params.runtime)
    if artifact.format not in rt.formats:
        raise TrialPruned(f"runtime {params.runtime} cannot run a {artifact.format} artifact")
    return rt.open_session(Path(artifact.path), params)
