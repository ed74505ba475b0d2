"""The deployment parameters, derived from the plug-ins that read them.

Every parameter a trial can take is declared once, by whoever reads it: the core ones
(``runtime``, ``provider``, ``threads``, ``batch_size``) here; a runtime's own options (e.g.
onnxruntime's ``graph_optimization``, OpenVINO's ``ov_hint``) by its module in
``workbench/runtimes/``; a variant transform's (``bits``, ``sparsity``...) by its module in
``workbench/variants/``. From those declarations follow the allowed values a config is checked
against (``config``), the defaults and checks of a trial's parameters (``params``) and the
conditional search space (``sweep``: a parameter that does not apply is not sampled).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator

from workbench import runtimes, variants
from workbench.core.parameter import CPU_ALIASES, Parameter

# The serving engines (``workbench.serve``: name -> "module:Class", loaded by name when used) and
# the batching options each understands; the others are not sampled for it. Declared here, with
# the serving parameters they gate, because the search space reads them long before anything is
# served. Adding an engine: its module in workbench/serve/ and a line in both.
ENGINES = {"builtin": "workbench.serve.builtin:BuiltinEngine",
           "kserve": "workbench.serve.kserve:KServeEngine"}
ENGINE_OPTIONS = {"builtin": ("max_batch_size", "max_queue_delay_ms", "batch_policy", "max_queue", "instances",
                              "threads"),
                  "kserve": ("threads",)}


def _runtime_has_choice_of_provider(p: Mapping[str, Any]) -> bool:
    rt = runtimes.registered().get(p.get("runtime"))
    return rt is not None and len(rt.providers) > 1


def _serving(option: str | None = None) -> Callable[[Mapping[str, Any]], bool]:
    """Applies in the server scenario only, and (``option``) only to an engine that takes it
    (:data:`ENGINE_OPTIONS`; kserve has no batcher). The batching delay and policy
    mean nothing when a batch holds one request (it is full as soon as it is made)."""

    def applies(p: Mapping[str, Any]) -> bool:
        if p.get("scenario") != "server":
            return False
        if option is None:
            return True
        if option not in ENGINE_OPTIONS.get(p.get("serving_engine", "builtin"), ()):
            return False
        if option in ("max_queue_delay_ms", "batch_policy") and p.get("max_batch_size", 2) == 1:
            return False
        return True

    return applies


def serving() -> list[Parameter]:
    """The server scenario's own parameters (read by ``workbench.trial.server``)."""
    return [
        Parameter("serving_engine", "builtin", str, choices=tuple(ENGINES), applies=_serving(),
                  help="the serving engine (workbench.serve)"),
        Parameter("max_batch_size", 8, int, ge=1, applies=_serving("max_batch_size"),
                  help="largest batch the server's batcher forms"),
        Parameter("max_queue_delay_ms", 2.0, float, ge=0, applies=_serving("max_queue_delay_ms"),
                  help="longest a queued request waits for a batch to fill"),
        Parameter("batch_policy", "delay", str, choices=("delay", "idle"), applies=_serving("batch_policy"),
                  help="delay: wait up to the delay; idle: send what is queued when an instance is free"),
        Parameter("instances", 1, int, ge=1, applies=_serving("instances"),
                  help="model instances serving in parallel"),
    ]


def core() -> list[Parameter]:
    """The parameters every trial has, whatever its runtime and variant."""
    rts = runtimes.registered()
    providers = tuple(dict.fromkeys(CPU_ALIASES + tuple(p for rt in rts.values() for p in rt.providers)))
    return [
        Parameter("runtime", "onnxruntime", str, choices=tuple(rts), help="the runtime module"),
        Parameter("provider", "CPUExecutionProvider", str, choices=providers,
                  applies=_runtime_has_choice_of_provider,
                  help="an execution provider or device of the runtime"),
        Parameter("threads", 1, int, ge=1),
        Parameter("batch_size", 1, int, ge=1),
    ]


def parameters() -> dict[str, Parameter]:
    """Every parameter, by name: core, then the variant transforms', then the runtimes' options."""
    out = {p.name: p for p in core() + serving()}
    for t in variants.registered():
        for p in t.parameters:
            _add(out, p, f"transform {t.name}")
    for rt in runtimes.registered().values():
        for p in rt.options:
            owner = rt.name
            gate = p.applies
            p = Parameter(**{**p.__dict__, "applies": (lambda q, o=owner, g=gate: q.get("runtime") == o
                                                        and (g is None or g(q)))})
            _add(out, p, f"runtime {rt.name}")
    return out


def _add(out: dict[str, Parameter], p: Parameter, owner: str) -> None:
    seen = out.get(p.name)
    if seen is not None and (seen.default, seen.type, seen.choices) != (p.default, p.type, p.choices):
        raise ValueError(f"{owner} declares parameter {p.name} differently from an earlier plug-in")
    if seen is None:
        out[p.name] = p


def applies(name: str, params: Mapping[str, Any]) -> bool:
    """Whether parameter ``name`` means anything given the ``params`` chosen so far."""
    p = parameters().get(name)
    return p is None or p.applies is None or bool(p.applies(params))


class _Conditions(Mapping):
    """``{name: condition}`` for the conditional parameters, read from the registries on each
    access (so a runtime registered later is seen by a module that imported this earlier)."""

    def _current(self) -> dict[str, Callable[[Mapping[str, Any]], bool]]:
        return {n: p.applies for n, p in parameters().items() if p.applies is not None}

    def __getitem__(self, name: str):
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


CONDITIONS: Mapping[str, Callable[[Mapping[str, Any]], bool]] = _Conditions()


def check(name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for parameter ``name`` (None: allowed; unknown names too)."""
    p = parameters().get(name)
    return None if p is None else p.check(value)


def defaults() -> dict[str, Any]:
    """Every parameter's default."""
    return {n: p.default for n, p in parameters().items()}
