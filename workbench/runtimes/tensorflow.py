"""The unmodified fp32 model run by TensorFlow: the baseline every speed-up is measured against.

A Keras model's forward pass is a ``tf.function`` with a dynamic batch signature (what a TF
serving deployment runs), not ``model.predict``, whose per-call overhead would flatter every
other runtime. A SavedModel runs its ``serving_default`` signature. Threads are set through
``tf.config.threading`` (which only takes effect before TensorFlow's first op in the process:
each trial notebook is a fresh kernel, so there it always does).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.errors import TrialPruned
from workbench.inputs import by_runtime_names


class TensorflowSession:
    def __init__(self, path: Path, params):
        if params.provider not in ("CPUExecutionProvider", "CPU", "default"):
            raise TrialPruned(f"runtime tensorflow: provider {params.provider} is not supported "
                              "(this baseline runs on the CPU)")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(params.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialised in this process: keep its setting
            pass
        t0 = time.perf_counter()
        if Path(path).is_dir():  # SavedModel
            from workbench.usermodel import saved_model_signature

            self._loaded, sig, in_names, out_name = saved_model_signature(Path(path), params.output)
            self._names = [in_names] if isinstance(in_names, str) else list(in_names)
            specs = sig.structured_input_signature[1]
            self._fn = tf.function(lambda *xs: sig(**dict(zip(self._names, xs)))[out_name],
                                   input_signature=tuple(tf.TensorSpec(specs[n].shape, specs[n].dtype)
                                                         for n in self._names))
        else:
            import keras

            model = keras.saving.load_model(path, safe_mode=not params.trust_model_code)
            self._names = [t.name for t in model.inputs]
            spec = tuple(tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs)
            self._fn = tf.function(
                lambda *xs: model(dict(zip(self._names, xs)) if len(xs) > 1 else xs[0], training=False),
                input_signature=spec)
        self._fn.get_concrete_function()
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = ["tensorflow:CPU"]

    def run(self, batch) -> np.ndarray:
        """``batch``: one array, or a dict of named arrays for a model with several inputs."""
        return self._fn(*by_runtime_names(batch, self._names)).numpy()

    def close(self) -> None:
        del self._fn


def open_session(path: Path, params) -> TensorflowSession:
    return TensorflowSession(path, params)
