"""What a run leaves: its directory and files, its Optuna storage, the results table, Pareto fronts,
and ``best.json`` as its readers see it."""
