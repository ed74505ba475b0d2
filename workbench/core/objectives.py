"""The objectives a sweep can optimise: each a metric a trial returns, with its direction.

A new objective is a metric that ``workbench.trial.run`` returns, added here with its direction.
"""

OBJECTIVES = {
    "accuracy": "maximize",
    "latency_p50_ms": "minimize",
    "latency_p90_ms": "minimize",
    "latency_p95_ms": "minimize",
    "latency_p99_ms": "minimize",
    "throughput_sps": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "max_qps_at_slo": "maximize",  # scenario server
    "mae": "minimize",  # regression tasks
    "rmse": "minimize",
}

REGRESSION_ONLY = ("mae", "rmse")
