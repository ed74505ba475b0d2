"""onnxruntime sessions with explicit threads, optimization level, execution mode and provider checks.

Every provider of ``onnxruntime.get_available_providers()`` can be requested. After the session
is created the *active* providers are read back: onnxruntime silently falls back to the CPU when
a provider fails to initialise (no CUDA driver, for example), and a trial that asked for CUDA
and measured the CPU would be a lie, so that trial is pruned with the reason instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned
from workbench.inputs import by_runtime_names

GRAPH_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
                      "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
EXECUTION_MODE = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


def session_options(params):
    """SessionOptions from the trial's threads, inter-op threads, optimization level and mode."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = params.threads
    opts.inter_op_num_threads = params.inter_op_threads
    opts.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODE[params.execution_mode])
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            GRAPH_OPTIMIZATION[params.graph_optimization])
    opts.log_severity_level = 3
    return opts


class OrtSession:
    def __init__(self, path: Path, params):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if params.provider not in available:
            raise TrialPruned(f"provider {params.provider} is not available in this onnxruntime "
                              f"build (available: {', '.join(available)})")
        t0 = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=session_options(params),
                                              providers=[params.provider])
        except Exception as err:  # e.g. the CUDA provider library present but no driver
            line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise TrialPruned(f"provider {params.provider} could not create a session ({line})") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = self._sess.get_providers()
        if params.provider not in self.providers:
            raise TrialPruned(f"provider {params.provider} was requested but onnxruntime activated "
                              f"only {', '.join(self.providers)}")
        inp = self._sess.get_inputs()[0]
        fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
        if fixed is not None and fixed != params.batch_size:
            raise TrialPruned(f"the model's batch dimension is fixed to {fixed} "
                              f"(asked batch_size={params.batch_size})")
        self._inputs = [i.name for i in self._sess.get_inputs()]
        self._outputs = [self._sess.get_outputs()[0].name]

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        return self._sess.run(self._outputs, dict(zip(self._inputs, by_runtime_names(batch, self._inputs))))[0]

    def close(self) -> None:
        del self._sess


def open_session(path: Path, params) -> OrtSession:
    return OrtSession(path, params)
