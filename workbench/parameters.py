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
from dataclasses import dataclass
from typing import Any, Callable, Iterator

# Provider names meaning "this runtime's default CPU path"; every runtime accepts them.
CPU_ALIASES = ("CPUExecutionProvider", "CPU", "default")


@dataclass(frozen=True)
class Parameter:
    """One trial parameter: type, default, allowed values or bounds, and when it applies.

    ``applies(params)`` gets the parameters chosen so far (a dict; a missing name means "not
    chosen yet") and says whether this one means anything for them. ``must_apply``: a value
    other than the default must be honoured by some transform of the trial's variant route, or
    the trial is pruned with the reason (``bits=8`` on a runtime that runs only the fp32 model).
    """

    name: str
    default: Any
    type: type
    choices: tuple | None = None
    ge: float | None = None
    le: float | None = None
    applies: Callable[[Mapping[str, Any]], bool] | None = None
    must_apply: bool = False
    help: str = ""

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (a message without the name), or None."""
        if self.choices is not None:
            # 8.0 is not a bit width and True is not 1: the type must match, not only ==
            if (not isinstance(value, self.type) or isinstance(value, bool) != (self.type is bool)
                    or value not in self.choices):
                return f"unknown value {value!r} (choose from {', '.join(map(str, self.choices))})"
            return None
        if self.type is int and (not isinstance(value, int) or isinstance(value, bool)):
            return f"must be {self._kind()} (got {value!r})"
        if self.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"must be {self._kind()} (got {value!r})"
        if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
            return f"must be {self._kind()} (got {value!r})"
        return None

    def _kind(self) -> str:
        if self.type is int:
            return {0: "a non-negative integer", 1: "a positive integer"}.get(self.ge, "an integer")
        if self.ge is not None and self.le is not None:
            return f"a number in {self.ge}..{self.le}"
        return "a number"


def _runtime_has_choice_of_provider(p: Mapping[str, Any]) -> bool:
    from workbench import runtimes

    rt = runtimes.registered().get(p.get("runtime"))
    return rt is not None and len(rt.providers) > 1


def _serving(option: str | None = None) -> Callable[[Mapping[str, Any]], bool]:
    """Applies in the server scenario only, and (``option``) only to an engine that takes it
    (``workbench.serve.ENGINE_OPTIONS``; kserve has no batcher). The batching delay and policy
    mean nothing when a batch holds one request (it is full as soon as it is made)."""

    def applies(p: Mapping[str, Any]) -> bool:
        if p.get("scenario") != "server":
            return False
        if option is None:
            return True
        from workbench.serve import ENGINE_OPTIONS

        if option not in ENGINE_OPTIONS.get(p.get("serving_engine", "builtin"), ()):
            return False
        if option in ("max_queue_delay_ms", "batch_policy") and p.get("max_batch_size", 2) == 1:
            return False
        return True

    return applies


def serving() -> list[Parameter]:
    """The server scenario's own parameters (read by ``workbench.serve.trial``)."""
    from workbench.serve import ENGINES

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
    from workbench import runtimes

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
    from workbench import runtimes, variants

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
