"""Experiment files: schema, loading and validation with errors that name the field and file.

An experiment is a YAML file (see ``experiments/digits.yaml``). Every parameter of the search
space is either fixed (a scalar), a list of choices, or a numeric range ``{low, high, step}``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.config import parameters
from workbench.core import scenarios
from workbench.core.errors import ConfigError, first_line
from workbench.core.objectives import OBJECTIVES, REGRESSION_ONLY

Scalar = Union[bool, int, float, str]
# An integer range may hold at most this many values (a wider one needs a step); a grid sweep at
# most MAX_GRID points (counted before conditional parameters are dropped).
MAX_RANGE_VALUES = 100_000
MAX_GRID = 100_000


class Range(BaseModel):
    """A numeric search range; ints when low, high and step are ints."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    low: int | float
    high: int | float
    step: int | float | None = None
    log: bool = False

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number (got {value!r})")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"must be a finite number (got {value!r})")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step})")
        if self.log and self.step is not None:  # Optuna refuses the two together
            raise ValueError("step and log: true cannot be used together")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.is_int and len(self._int_range()) > MAX_RANGE_VALUES:
            raise ValueError(f"the range holds {len(self._int_range()):,} values (at most "
                             f"{MAX_RANGE_VALUES:,}; give a larger step)")
        return self

    def _int_range(self) -> range:
        return range(int(self.low), int(self.high) + 1, int(self.step or 1))

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high, self.step if self.step is not None else 1))

    def values(self) -> list:
        """The grid values of this range (used for checks and baselines)."""
        if self.is_int:
            return list(self._int_range())
        return [self.low, self.high]


Param = Union[Range, list[Scalar], Scalar]


def _choices(value: Param) -> list:
    """The values to check: a range's ends (the checks below are bounds, and a range is convex)."""
    if isinstance(value, Range):
        return [value.low, value.high]
    if isinstance(value, list):
        return value
    return [value]


def _every_value(name: str, value: Param, allowed: tuple) -> list:
    """Every value ``value`` can produce, for a parameter with a fixed set of ``allowed`` values:
    a range must be of integers, and all of them must be allowed ({low: 4, high: 32} gives 5)."""
    if not isinstance(value, Range):
        return _choices(value)
    if not value.is_int or not isinstance(allowed[0], int) or isinstance(allowed[0], bool):
        raise ValueError(f"{name}: a range is not allowed here (choose from "
                         f"{', '.join(map(str, allowed))}, or a list of them)")
    values = value._int_range()
    if len(values) > len(allowed):  # more values than allowed ones: some are not allowed
        bad = next(v for v in values if v not in allowed)
        raise ValueError(f"{name}: the range {value.low}..{value.high} includes {bad}, which is not "
                         f"allowed (choose from {', '.join(map(str, allowed))})")
    return list(values)


def _param(name: str, value: Any) -> Param:
    if isinstance(value, dict):
        try:
            return Range.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join([name, *(str(p) for p in first["loc"])])
            raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    if isinstance(value, list) and not value:
        raise ValueError(f"{name}: must not be an empty list")
    return value


# The parameters of a search space that omits them, in the order a sweep samples them: the
# runtime first (what applies further down depends on it), the serving engine before the options
# it takes. Their defaults are the declarations' (workbench.config.parameters), not written here.
SPACE_ORDER = ("runtime", "bits", "int8_mode", "calibration", "per_channel", "sparsity", "prune_structure",
               "finetune_epochs", "batch_size", "provider", "threads", "inter_op_threads", "graph_optimization",
               "execution_mode", "ov_hint", "ov_streams",
               # scenario server only (not sampled otherwise)
               "serving_engine", "max_batch_size", "max_queue_delay_ms", "batch_policy", "instances")


class SearchSpace(BaseModel):
    """The deployment parameters a sweep varies; a scalar fixes a parameter.

    Every key is a declared parameter (a runtime's or a transform's own too); those of
    :data:`SPACE_ORDER` that are not given take their declared default.
    """

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _declared_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        declared = parameters.defaults()
        out = {name: declared[name] for name in SPACE_ORDER}
        out.update(values)  # a given key keeps its place in the order; others follow it
        return out

    @model_validator(mode="after")
    def _check_values(self) -> "SearchSpace":
        # Allowed values and bounds come from the plug-ins that read each parameter
        # (workbench.config.parameters). A range is checked over every value it can produce.
        declared = parameters.parameters()
        for name, value in list(self):
            if name not in declared:
                raise ValueError(f"{name}: unknown key")
            value = self.model_extra[name] = _param(name, value)
            p = declared[name]
            if p.choices:
                values = _every_value(name, value, p.choices)
            elif isinstance(value, Range) and p.type is int and not value.is_int:
                raise ValueError(f"{name}: a range of integers is needed (low, high and step "
                                 f"integers; got {value.low}..{value.high} step {value.step})")
            else:
                values = _choices(value)
            for v in values:
                why = p.check(v)
                if why:
                    raise ValueError(f"{name}: {why}")
        return self

    def grid_size(self) -> int:
        """Points of the full grid, before conditional parameters are dropped (an upper bound)."""
        size = 1
        for _, spec in self:
            if isinstance(spec, Range):
                size *= len(spec._int_range()) if spec.is_int else 2
            elif isinstance(spec, list):
                size *= len(spec)
        return size

    def fixed(self) -> dict[str, Any]:
        """Parameters that are not searched, with their values."""
        return {k: v for k, v in self if not isinstance(v, (list, Range))}


class Measurement(BaseModel):
    """The timing protocol (see DESIGN.md, "Measurement protocol")."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    warmup: int = Field(10, ge=0)
    min_runs: int = Field(50, ge=1)
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _cap(self) -> "Measurement":
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds})")
        return self


class Experiment(BaseModel):
    """One experiment file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = "digits_cnn"
    data: str = "digits"
    search_space: SearchSpace = SearchSpace()
    objectives: list[str] = ["accuracy", "latency_p90_ms", "size_bytes"]
    max_accuracy_drop: float = Field(1.0, ge=0)
    n_trials: int | None = Field(None, ge=1)  # None: see workbench.sweep.space.default_n_trials
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = Field(0, ge=0, le=2**31 - 1)  # numpy's seeds are unsigned 32-bit (+ worker index)
    calibration_samples: int = Field(200, ge=1)
    measurement: Measurement = Measurement()
    storage: str | None = None
    trial_timeout_s: float = Field(600.0, gt=0)
    max_consecutive_failures: int = Field(5, ge=1)
    # classification: top-1 accuracy; regression: MAE/RMSE, and max_accuracy_drop is the largest
    # allowed MAE increase (in the target's units) over the fp32 model
    task: Literal["classification", "regression"] = "classification"
    # let a .keras file with Python code in it (Lambda layers) be loaded (safe_mode=False)
    trust_model_code: bool = False
    # --- models (issue 14) ---
    # the scored output of a model with several: its name or index (default the first)
    output: Union[int, str] = 0
    # an untrained student .keras file for distillation (default: the teacher scaled by
    # search_space.distill_width); relative to the experiment file
    distill_student: str | None = None

    # --- scenario: which deployment question the sweep answers (issue 12; workbench.decision) ---
    # single_stream: lowest latency_percentile at batch 1 (optional latency_budget_ms);
    # offline: highest throughput, batch size searched. Default objectives follow the scenario;
    # an omitted search_space is derived from the model and machine (workbench.sweep.space.auto).
    scenario: str = "single_stream"
    latency_percentile: Literal[50, 90, 95, 99] = 90
    latency_budget_ms: float | None = Field(None, gt=0)
    # server: the highest QPS whose slo_percentile-th latency is within slo_ms (required there)
    slo_ms: float | None = Field(None, gt=0)
    slo_percentile: float = Field(99.0, gt=0, lt=100)

    @field_validator("scenario")
    @classmethod
    def _scenario(cls, value: str) -> str:
        try:
            scenarios.scenario(value)
        except Exception as err:  # WorkbenchError: "scenario: ..." -> the field's message
            raise ValueError(str(err).removeprefix("scenario: ")) from None
        return value

    @model_validator(mode="after")
    def _scenario_defaults(self) -> "Experiment":
        sc = scenarios.scenario(self.scenario)
        if "objectives" not in self.model_fields_set:
            # not via setattr: that would mark objectives as given by the user
            self.__dict__["objectives"] = sc.objectives(self.latency_percentile)
        # single_stream with batch sizes listed: all are measured, only the smallest (1 unless
        # the experiment leaves it out) is a candidate (workbench.decision.choose.candidates)
        if self.latency_budget_ms is not None and sc.name != "single_stream":
            raise ValueError("latency_budget_ms: only for scenario single_stream")
        if sc.name == "server" and self.slo_ms is None:
            raise ValueError("slo_ms: required for scenario server (the latency objective, e.g. slo_ms: 10)")
        # a value, not the key, is the mistake: a run's experiment.yaml snapshot lists every
        # setting (slo_ms: null, slo_percentile: 99.0) and must load back as it was written
        if sc.name != "server":
            default_pct = type(self).model_fields["slo_percentile"].default
            for name, given in (("slo_ms", self.slo_ms is not None),
                                ("slo_percentile", self.slo_percentile != default_pct)):
                if given:
                    raise ValueError(f"{name}: only for scenario server")
        return self

    @property
    def auto_space(self) -> bool:
        """True when the file gives no search_space (``workbench.sweep.space.resolve`` derives one)."""
        return "search_space" not in self.model_fields_set

    # --- end of the scenario block ---

    @model_validator(mode="after")
    def _grid(self) -> "Experiment":
        if self.sampler == "grid" and self.search_space.grid_size() > MAX_GRID:
            raise ValueError(f"sampler: the grid has up to {self.search_space.grid_size():,} points "
                             f"(at most {MAX_GRID:,}); narrow the search space or use tpe/random")
        return self

    @model_validator(mode="after")
    def _task_objectives(self) -> "Experiment":
        if self.task == "regression":
            if "objectives" not in self.model_fields_set:  # the default, adapted to regression
                self.objectives = ["mae" if o == "accuracy" else o for o in self.objectives]
            elif "accuracy" in self.objectives:
                raise ValueError("objectives: accuracy is for task classification; use mae or rmse")
        else:
            bad = [o for o in self.objectives if o in REGRESSION_ONLY]
            if bad:
                raise ValueError(f"objectives: {bad[0]} is for task regression (this experiment's "
                                 "task is classification)")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must not be an empty list")
        for v in value:
            if v not in OBJECTIVES:
                raise ValueError(f"unknown objective {v!r} (choose from {', '.join(OBJECTIVES)})")
        if len(set(value)) != len(value):
            raise ValueError("each objective may be given once")
        return value

    # Where relative model/data paths are resolved from: the experiment file's folder.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def resolve(self, spec: str) -> str:
        """A builtin name stays as is; a path is made absolute relative to the experiment file."""
        if "/" in spec or "." in spec or (self.base_dir / spec / "saved_model.pb").is_file():
            return str((self.base_dir / spec).resolve())
        return spec


def _format(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "union[")))
    loc = _strip_union_tags(loc)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    m = re.match(r"^([\w.]+): (.*)$", msg)
    if m and first["type"] == "value_error":  # a model-level check naming its own field
        loc, msg = f"{loc}.{m.group(1)}" if loc else m.group(1), m.group(2)
    return f"{loc}: {msg}" if loc else msg


def _strip_union_tags(loc: str) -> str:
    # pydantic puts the tried union member in the location ("bits.list[...].0"); users care
    # about the field they wrote.
    parts = [p for p in loc.split(".") if not any(t in p for t in ("[", "Range", "int", "str", "float", "bool"))
             or p.isdigit()]
    return ".".join(parts)


def parse(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Experiment:
    """Validate an already-parsed mapping; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format(err)}") from None
    if base_dir is not None:
        exp.base_dir = base_dir
    return exp


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); an experiment is a "
                          "YAML file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({first_line(err)})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise ConfigError(f"{path}:{where} not valid YAML ({first_line(problem)})") from None
    except RecursionError:  # deeply nested flow collections
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    return parse(data, str(path), path.resolve().parent)
