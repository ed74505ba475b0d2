"""The declaration of one trial parameter, by whoever reads it.

A runtime declares its options, a variant transform the parameters it reads, the serving layer
its batching options (``workbench.config.parameters`` gathers them all). From a declaration
follow the allowed values a config is checked against, a trial's defaults, and when the sweep
samples the parameter at all (``applies``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

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
