"""``best.json`` for its readers: where it is, the table it was decided on, and reading it back.

``workbench.decision.best`` is its one writer; reports and exports read it through this module
and never import the deciding code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError

BEST_FILE = "best.json"


def table_key(df) -> list[list[str]]:
    """What a decision was taken on (trials and states): a report re-decides when it changed."""
    return [[str(t), str(s)] for t, s in zip(df.trial, df.state)]


def clean_json(v):
    if isinstance(v, dict):
        return {str(k): clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return clean_json(v.item())
    return v


def processes_text(interleaved: dict[str, Any]) -> str:
    """Where a re-measurement's rounds ran: "one fresh process" or "N fresh processes"."""
    n = int(interleaved.get("processes", 1))
    return "one fresh process" if n == 1 else f"{n} fresh processes"


def clean(d: dict) -> dict:
    """NaN -> None and numpy scalars -> Python, for JSON."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out


def read_best(run_dir: Path, full) -> dict:
    """``best.json`` as the decision wrote it, noting when it was decided on an earlier table;
    none yet: a recommendation of nothing that says how to decide."""
    path = run_dir / BEST_FILE
    if not path.exists():
        return {"trial": None, "reason": f"not decided yet (run `workbench report {run_dir}`)"}
    try:
        best = json.loads(path.read_text())
    except ValueError as err:
        raise WorkbenchError(f"{path}: damaged, not valid JSON ({err})") from None
    if best.get("table") not in (None, table_key(full)):
        best["reason"] = (f"{best.get('reason', '')} (decided before the latest trials finished; "
                          f"`workbench report {run_dir}` decides again)")
    return best
