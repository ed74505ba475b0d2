"""onnxruntime sessions with explicit threads, optimization level and provider checks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned


class OrtSession:
    def __init__(self, path: Path, params):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if params.provider not in available:
            raise TrialPruned(f"provider {params.provider} is not available in this onnxruntime "
                              f"build (available: {', '.join(available)})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = params.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        t0 = time.perf_counter()
        self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=[params.provider])
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = self._sess.get_providers()
        if params.provider not in self.providers:
            raise TrialPruned(f"provider {params.provider} was requested but onnxruntime activated "
                              f"only {', '.join(self.providers)}")
        self._input = self._sess.get_inputs()[0].name
        self._outputs = [self._sess.get_outputs()[0].name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._sess.run(self._outputs, {self._input: batch})[0]

    def close(self) -> None:
        del self._sess


def open_session(path: Path, params) -> OrtSession:
    return OrtSession(path, params)
