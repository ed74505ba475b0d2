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

            self._loaded, sig, in_name, out_name = saved_model_signature(Path(path))
            spec = sig.structured_input_signature[1][in_name]
            self._fn = tf.function(lambda x: sig(**{in_name: x})[out_name],
                                   input_signature=(tf.TensorSpec(spec.shape, tf.float32),))
        else:
            import keras

            model = keras.saving.load_model(path, safe_mode=not params.trust_model_code)
            spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
            self._fn = tf.function(lambda x: model(x, training=False), input_signature=(spec,))
        self._fn.get_concrete_function()
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.providers = ["tensorflow:CPU"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch).numpy()

    def close(self) -> None:
        del self._fn


def open_session(path: Path, params) -> TensorflowSession:
    return TensorflowSession(path, params)
