"""The parameters of one trial, as a notebook or the CLI receives them.

Optuna and papermill can hand values over as numpy scalars or strings ("8", "0.5", "True");
validation casts them to builtins once, here, so nothing downstream has to care.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import ConfigError


class TrialParams(BaseModel):
    """Everything that defines one trial: the deployment configuration and how to measure it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "digits_cnn"
    data: str = "digits"
    bits: Literal[32, 16, 8, 4] = 32
    int8_mode: Literal["static", "dynamic"] = "static"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = False
    sparsity: float = Field(0.0, ge=0.0, le=0.95)
    prune_structure: Literal["unstructured", "channels"] = "unstructured"
    finetune_epochs: int = Field(2, ge=0)
    batch_size: int = Field(1, ge=1)
    runtime: Literal["onnxruntime", "openvino", "litert", "tensorflow"] = "onnxruntime"
    provider: str = "CPUExecutionProvider"
    threads: int = Field(1, ge=1)
    # onnxruntime session options (ignored by the other runtimes)
    inter_op_threads: int = Field(1, ge=1)
    graph_optimization: Literal["all", "extended", "basic", "disabled"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    # OpenVINO: performance hint and number of streams (0: let the hint decide)
    ov_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    ov_streams: int = Field(0, ge=0)
    # the experiment's task and whether a .keras file may run its own Python code (Lambda)
    task: Literal["classification", "regression"] = "classification"
    trust_model_code: bool = False
    calibration_samples: int = Field(200, ge=1)
    warmup: int = Field(10, ge=0)
    min_runs: int = Field(50, ge=1)
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(10.0, gt=0)
    max_accuracy_drop: float = Field(1.0, ge=0)
    seed: int = 0
    # --- models (issue 14): the scored output of a model with several, and distillation ---
    output: int | str = 0  # an output name or index
    distill_width: float = Field(1.0, gt=0.0, le=1.0)  # 1.0: no distillation
    distill_temperature: float = Field(3.0, gt=0.0)
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the teacher term
    distill_epochs: int = Field(5, ge=1)
    distill_student: str | None = None  # an untrained student .keras file (else: scaled teacher)

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "TrialParams":
        """Validate (and cast) ``values``; a bad one is a one-line error naming the parameter."""
        clean = {k: to_builtin(v) for k, v in values.items()}
        try:
            return cls.model_validate(clean)
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"trial parameter {name}: {first['msg']} (got {first.get('input')!r})") from None

    def describe(self) -> str:
        """A short human label, e.g. ``onnxruntime int8-static b1 t1``."""
        bits = {32: "fp32", 16: "fp16", 8: f"int8-{self.int8_mode}", 4: "int4"}[self.bits]
        sp = f" sp{self.sparsity:g}-{self.prune_structure}" if self.sparsity else ""
        if self.distill_width < 1.0:
            sp = (" distill-student" if self.distill_student else f" distill{self.distill_width:g}") + sp
        return f"{self.runtime} {bits}{sp} b{self.batch_size} t{self.threads}"


def to_builtin(value: Any) -> Any:
    """numpy scalars -> Python scalars; numeric/boolean strings -> numbers/bools."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value
