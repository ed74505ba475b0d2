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

from workbench.errors import ConfigError

RUNTIMES = ("onnxruntime", "openvino", "litert", "tensorflow")
# Every execution provider name onnxruntime knows. Unknown names are config errors; known ones
# that the installed build lacks are pruned trials with their reason.
ORT_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
    "ROCMExecutionProvider", "MIGraphXExecutionProvider", "QNNExecutionProvider",
    "XnnpackExecutionProvider", "NnapiExecutionProvider", "AzureExecutionProvider",
    "WebGpuExecutionProvider",
)
PROVIDERS = ORT_PROVIDERS + ("CPU", "GPU", "NPU", "xnnpack", "default")
OBJECTIVES = {
    "accuracy": "maximize",
    "latency_p50_ms": "minimize",
    "latency_p90_ms": "minimize",
    "latency_p99_ms": "minimize",
    "throughput_sps": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "mae": "minimize",  # regression tasks
    "rmse": "minimize",
}
REGRESSION_ONLY = ("mae", "rmse")

Scalar = Union[bool, int, float, str]


class Range(BaseModel):
    """A numeric search range; ints when low, high and step are ints."""

    model_config = ConfigDict(extra="forbid")
    low: float | int
    high: float | int
    step: float | int | None = None
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step})")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high, self.step if self.step is not None else 1))

    def values(self) -> list:
        """The grid values of this range (used for checks and baselines)."""
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return [self.low, self.high]


Param = Union[Range, list[Scalar], Scalar]


def _choices(value: Param) -> list:
    if isinstance(value, Range):
        return [value.low, value.high]
    if isinstance(value, list):
        return value
    return [value]


class SearchSpace(BaseModel):
    """The deployment parameters a sweep varies; a scalar fixes a parameter."""

    model_config = ConfigDict(extra="forbid")
    bits: Param = 32
    int8_mode: Param = "static"
    calibration: Param = "minmax"
    per_channel: Param = False
    sparsity: Param = 0.0
    prune_structure: Param = "unstructured"
    finetune_epochs: Param = 2
    batch_size: Param = 1
    runtime: Param = "onnxruntime"
    provider: Param = "CPUExecutionProvider"
    threads: Param = 1
    inter_op_threads: Param = 1
    graph_optimization: Param = "all"
    execution_mode: Param = "sequential"
    ov_hint: Param = "LATENCY"
    ov_streams: Param = 0
    # --- models (issue 14): distillation (distill_width 1.0 = the teacher, no distillation) ---
    distill_width: Param = 1.0
    distill_temperature: Param = 3.0
    distill_alpha: Param = 0.5
    distill_epochs: Param = 5

    @field_validator("*", mode="after")
    @classmethod
    def _non_empty(cls, value: Param) -> Param:
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value

    @model_validator(mode="after")
    def _check_values(self) -> "SearchSpace":
        allowed = {
            "bits": (32, 16, 8, 4),
            "int8_mode": ("static", "dynamic"),
            "calibration": ("minmax", "entropy", "percentile"),
            "per_channel": (True, False),
            "prune_structure": ("unstructured", "channels"),
            "runtime": RUNTIMES,
            "graph_optimization": ("all", "extended", "basic", "disabled"),
            "execution_mode": ("sequential", "parallel"),
            "ov_hint": ("LATENCY", "THROUGHPUT"),
            "provider": PROVIDERS,
        }
        for name, ok in allowed.items():
            for v in _choices(getattr(self, name)):
                if v not in ok or isinstance(v, bool) != isinstance(ok[0], bool):
                    raise ValueError(f"{name}: unknown value {v!r} (choose from {', '.join(map(str, ok))})")
        for v in _choices(self.finetune_epochs):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"finetune_epochs: must be a non-negative integer (got {v!r})")
        for v in _choices(self.ov_streams):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ov_streams: must be a non-negative integer (got {v!r})")
        for name in ("batch_size", "threads", "inter_op_threads"):
            for v in _choices(getattr(self, name)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{name}: must be a positive integer (got {v!r})")
        for v in _choices(self.sparsity):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 0.95:
                raise ValueError(f"sparsity: must be a number in 0.0..0.95 (got {v!r})")
        # --- models (issue 14): distillation ---
        for name, ok, what in (("distill_width", lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
                               ("distill_temperature", lambda v: v > 0, "a positive number"),
                               ("distill_alpha", lambda v: 0.0 <= v <= 1.0, "a number in 0..1")):
            for v in _choices(getattr(self, name)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                    raise ValueError(f"{name}: must be {what} (got {v!r})")
        for v in _choices(self.distill_epochs):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"distill_epochs: must be a positive integer (got {v!r})")
        return self

    def fixed(self) -> dict[str, Any]:
        """Parameters that are not searched, with their values."""
        return {k: v for k, v in self if not isinstance(v, (list, Range))}


class Measurement(BaseModel):
    """The timing protocol (see DESIGN.md, "Measurement protocol")."""

    model_config = ConfigDict(extra="forbid")
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

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = "digits_cnn"
    data: str = "digits"
    search_space: SearchSpace = SearchSpace()
    objectives: list[str] = ["accuracy", "latency_p90_ms", "size_bytes"]
    max_accuracy_drop: float = Field(1.0, ge=0)
    n_trials: int = Field(10, ge=1)
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
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
    m = re.match(r"^(\w+): (.*)$", msg)
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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    return parse(data, str(path), path.resolve().parent)
