"""The parameters of one trial, as a notebook or the CLI receives them.

Optuna and papermill can hand values over as numpy scalars or strings ("8", "0.5", "True");
validation casts them to builtins once, here, so nothing downstream has to care.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workbench.config import parameters
from workbench.core.errors import ConfigError


class TrialParams(BaseModel):
    """Everything that defines one trial: the deployment configuration and how to measure it.

    The fields below are the same for every trial. The deployment parameters (``runtime``,
    ``provider``, and every parameter a variant transform or a runtime declares, such as
    ``bits`` or ``graph_optimization``) are checked against, and defaulted from, the plug-in
    registries (``workbench.config.parameters``): their allowed values are written down once, by the module
    that reads them. Read them as attributes like any field (``params.bits``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = "digits_cnn"
    data: str = "digits"
    batch_size: int = Field(1, ge=1)
    runtime: str = "onnxruntime"
    provider: str = "CPUExecutionProvider"
    threads: int = Field(1, ge=1)
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
    # --- models (issue 14): the scored output of a model with several; a student file for
    # distillation (distill_width & co. are declared by workbench.variants.distill) ---
    output: int | str = 0  # an output name or index
    distill_student: str | None = None  # an untrained student .keras file (else: scaled teacher)

    # which question the trial answers (workbench.core.scenarios.SCENARIOS): "server" runs it behind a
    # served endpoint under load (workbench.trial.server), the others in-process
    scenario: str = "single_stream"
    # --- scenario "server" (workbench.trial.server; ignored by the in-process scenarios) ---
    # the serving engine and its batching, and the latency objective the search holds to.
    serving_engine: Literal["builtin", "kserve"] = "builtin"
    max_batch_size: int = Field(8, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    batch_policy: Literal["delay", "idle"] = "delay"
    instances: int = Field(1, ge=1)
    slo_ms: float = Field(10.0, gt=0)
    slo_percentile: float = Field(99.0, gt=0, lt=100)

    @model_validator(mode="before")
    @classmethod
    def _registered_parameters(cls, values: Any) -> Any:
        """Check every deployment parameter against its declaration; fill the defaults."""
        if not isinstance(values, Mapping):
            return values
        declared = parameters.parameters()
        out = dict(values)
        for name, value in values.items():
            if name not in declared:
                if name not in cls.model_fields:
                    raise ValueError(f"{name}: unknown parameter (not a field, and no runtime "
                                     "or variant transform declares it)")
                continue
            p = declared[name]
            if p.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif p.type is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            why = p.check(value)
            if why:
                raise ValueError(f"{name}: {why}")
            out[name] = value
        for name, p in declared.items():
            if name not in out and name not in cls.model_fields:
                out[name] = p.default
        return out

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "TrialParams":
        """Validate (and cast) ``values``; a bad one is a one-line error naming the parameter."""
        clean = {k: to_builtin(v) for k, v in values.items()}
        try:
            return cls.model_validate(clean)
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            if not name:  # a check of _registered_parameters: "name: why (got value)"
                raise ConfigError(f"trial parameter {msg}") from None
            raise ConfigError(f"trial parameter {name}: {msg} (got {first.get('input')!r})") from None

    def describe(self) -> str:
        """A short human label, e.g. ``onnxruntime int8-static b1 t1``."""
        bits = {32: "fp32", 16: "fp16", 8: f"int8-{self.int8_mode}", 4: "int4"}[self.bits]
        # only where the route applies them (the TFLite converter has neither choice): a label
        # never names a choice its artifact did not make
        here = self.model_dump()
        if self.per_channel and parameters.applies("per_channel", here):
            bits += "-pc"  # per-channel scales: another artifact, so another label
        if getattr(self, "quant_ops", "all") == "compute" and parameters.applies("quant_ops", here):
            bits += "-mm"  # only MatMul/Gemm/Conv quantized
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
