"""The deployment questions a sweep answers (MLPerf vocabulary), one entry of :data:`SCENARIOS` each.

``single_stream`` (one sample at a time: the lowest latency percentile at batch 1), ``offline``
(the whole set: the highest throughput, batch size searched) or ``server`` (Poisson arrivals to
an endpoint: the highest QPS whose ``slo_percentile``-th latency is within ``slo_ms``). A
scenario names its primary metric, what an automatic space searches, its default objectives,
the question printed in reports, and whether the leaders of a decision can be re-measured
in-process (``workbench.decision``). A new scenario is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from workbench.core.errors import WorkbenchError

# A paired difference smaller than this is a tie even when its CI excludes 1.
TIE_MARGIN = 0.02

@dataclass(frozen=True)
class Scenario:
    """One deployment question: its primary metric and what the search varies.

    ``primary(percentile)`` names the metrics column; ``direction`` is ``minimize`` or
    ``maximize``; ``batch_one`` restricts candidates to batch-1 rows (a single stream sends one
    sample at a time; an experiment that fixes only larger sizes gets its smallest); ``searched`` lists the parameters an automatic space varies;
    ``objectives(percentile)`` the default objectives; ``question(percentile, info)`` is printed
    in the report (``info``: the run's settings, e.g. the server's SLO); ``remeasure``: whether
    the leaders are re-measured interleaved in-process (``remeasure_why`` says why not).
    """

    name: str
    primary: Callable[[int], str]
    direction: str
    searched: tuple[str, ...]
    objectives: Callable[[int], list[str]]
    question: Callable[[int, dict], str]
    batch_one: bool = False
    remeasure: bool = True
    remeasure_why: str = ""
    implemented: bool = True
    not_yet: str = ""
    # Per-round statistic of the interleaved re-measurement, from per-call ms and batch size.
    round_stat: Callable[[np.ndarray, int, int], float] = field(
        default=lambda ms, batch, pct: float(np.percentile(ms, pct)))

def _throughput(ms: np.ndarray, batch: int, pct: int) -> float:
    return float(batch * 1e3 / np.mean(ms))

SCENARIOS: dict[str, Scenario] = {
    "single_stream": Scenario(
        name="single_stream",
        primary=lambda pct: f"latency_p{pct}_ms",
        direction="minimize",
        searched=("bits", "int8_mode", "per_channel", "sparsity", "prune_structure", "runtime", "threads"),
        objectives=lambda pct: ["accuracy", f"latency_p{pct}_ms", "size_bytes"],
        question=lambda pct, info: f"lowest p{pct} latency at batch 1",
        batch_one=True,
    ),
    "offline": Scenario(
        name="offline",
        primary=lambda pct: "throughput_sps",
        direction="maximize",
        searched=("bits", "int8_mode", "per_channel", "sparsity", "prune_structure", "runtime", "threads",
                  "batch_size"),
        objectives=lambda pct: ["accuracy", "throughput_sps", "size_bytes"],
        question=lambda pct, info: "highest throughput (samples/s), any batch size",
        round_stat=_throughput,
    ),
    # workbench.trial.server: each trial serves its variant and ramps an open-loop load
    "server": Scenario(
        name="server",
        primary=lambda pct: "max_qps_at_slo",
        direction="maximize",
        searched=("bits", "runtime", "threads", "serving_engine", "max_batch_size", "max_queue_delay_ms",
                  "batch_policy", "instances"),
        objectives=lambda pct: ["accuracy", "max_qps_at_slo", "size_bytes"],
        question=lambda pct, info: (f"highest QPS with p{float(info.get('slo_percentile') or 99):g} <= "
                                    f"{float(info.get('slo_ms') or float('nan')):g} ms"),
        remeasure=False,
        remeasure_why=("server trials are not re-measured interleaved in-process: their metric is the "
                       "highest rate a served process sustained under an open-loop load within the SLO, "
                       "which an in-process timing loop does not measure; compared on the sweep's own "
                       f"measurements, within {TIE_MARGIN:.0%} a tie"),
    ),
}

LATENCY_PERCENTILES = (50, 90, 95, 99)

def scenario(name: str) -> Scenario:
    """The :class:`Scenario` called ``name``; unknown or not implemented: ``WorkbenchError``."""
    if name not in SCENARIOS:
        raise WorkbenchError(f"scenario: unknown {name!r} (choose from {', '.join(SCENARIOS)})")
    sc = SCENARIOS[name]
    if not sc.implemented:
        raise WorkbenchError(f"scenario: {sc.not_yet}")
    return sc

def question(info: dict[str, Any], batch: int | None = None) -> str:
    """The question a run answers, e.g. ``single_stream: lowest p90 latency at batch 1,
    accuracy drop <= 1 pt`` (``batch``: the batch size a single stream was measured at, when an
    experiment fixes one other than 1)."""
    sc = scenario(info.get("scenario", "single_stream"))
    pct = int(info.get("latency_percentile", 90))
    regression = info.get("task") == "regression"
    quality = (f"MAE increase <= {info['max_accuracy_drop']:g}" if regression else
               f"accuracy drop <= {info['max_accuracy_drop']:g} pt")
    text = f"{sc.name}: {sc.question(pct, info)}, {quality}"
    if sc.batch_one and batch not in (None, 1):
        text = text.replace("at batch 1", f"at batch {batch} (the smallest measured)")
    if info.get("latency_budget_ms"):
        text += f", p{pct} <= {info['latency_budget_ms']:g} ms"
    return text
