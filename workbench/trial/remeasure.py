"""The re-measurement child: ``python -m workbench.trial.remeasure`` (JSON on stdin and stdout).

``workbench.decision`` starts it by module name to time the leading candidates together in one
fresh process, one set of imports and one stretch of time, instead of two kernels minutes apart
on a noisy machine. Each candidate is re-opened exactly as its trial measured it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from workbench import data as data_mod
from workbench import runtimes, variants
from workbench.config.params import TrialParams
from workbench.measure.interleaved import interleave_rounds
from workbench.measure.timing import timing_batch


def open_candidate(params: dict[str, Any], artifact: str | None, artifact_format: str | None):
    """A session on a trial's artifact with the trial's runtime options, and its timing batch.

    The recorded artifact path is used when it still exists (same machine, same cache);
    otherwise the artifact is rebuilt from the recorded parameters (cached by content).
    """
    p = TrialParams.parse(params)
    if artifact and Path(artifact).exists():
        data = data_mod.load(p.data, p.task)
        art = variants.Artifact(Path(artifact), artifact_format or "onnx", "", ())
    else:
        data, _, art = variants.artifact_for(p)
    session = runtimes.load(p, art)
    return session, timing_batch(data.x_eval, p.batch_size), p


def rounds(candidates: list[dict[str, Any]], rounds: int = 7, slot_seconds: float = 0.15) -> dict[str, Any]:
    """Open every candidate (dicts with ``trial``, ``params``, ``artifact``, ``artifact_format``)
    and time them together (:func:`~workbench.measure.interleaved.interleave_rounds`); the
    per-call times (ms) per round, the orders and each candidate's batch size."""
    opened = {str(c["trial"]): open_candidate(c["params"], c.get("artifact"), c.get("artifact_format"))
              for c in candidates}
    try:
        result = interleave_rounds({n: (lambda s=s, b=b: s.run(b)) for n, (s, b, _) in opened.items()},
                                   rounds=rounds, slot_seconds=slot_seconds)
    finally:
        for s, _, _ in opened.values():
            s.close()
    return {**result, "batch_size": {n: p.batch_size for n, (_, _, p) in opened.items()}}


def _main() -> int:
    req = json.loads(sys.stdin.read())
    result = rounds(req["candidates"], rounds=int(req.get("rounds", 7)),
                    slot_seconds=float(req.get("slot_seconds", 0.15)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
