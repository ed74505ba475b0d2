"""Which configuration to deploy: the scenario's answer, decided once and written to ``best.json``.

``choose`` (candidates, leaders, the choice), ``stats`` (paired per-round ratios), ``remeasure``
(the leaders timed together in a fresh process, started by module name, never imported),
``best`` (:func:`~workbench.decision.best.decide`, the one writer of ``best.json``) and
``record`` (what readers of a decision need: reports and exports import only this).
"""
