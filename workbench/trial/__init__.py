"""One trial: a deployment configuration built, opened and measured; the one place a trial is defined.

``local`` (:func:`run`: in-process scenarios, and the dispatch to a served one), ``server``
(scenario server: served, under an open-loop load), ``remeasure`` (the re-measurement child,
``python -m workbench.trial.remeasure``), ``display`` (what the trial notebook shows).
"""

from workbench.trial.display import Summary
from workbench.trial.local import run, write_metrics

__all__ = ["Summary", "run", "write_metrics"]
