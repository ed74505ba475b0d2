"""The unmodified fp32 model run by TensorFlow: the baseline every speed-up is measured against.

A Keras model's forward pass is a ``tf.function`` with a dynamic batch signature (what a TF
serving deployment runs), not ``model.predict``, whose per-call overhead would flatter every
other runtime. A SavedModel runs its ``serving_default`` signature.

Threads are set through ``tf.config.threading``, which only takes effect before TensorFlow's
first op in the process (each trial notebook is a fresh kernel, so there it always does). When
TensorFlow is already running with other thread pools, the setting cannot be applied and the
trial is pruned with that reason rather than measured at a thread count it did not ask for. A
pool size of 0 is TensorFlow's default: ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``
when set, else one thread per core.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.cache import versions
from workbench.core.errors import TrialPruned
from workbench.data.inputs import by_runtime_names
from workbench.models.user import saved_model_signature
from workbench.runtimes import Runtime, register
from workbench.runtimes import why_not as first_line


def _effective(configured: int, env: str) -> int | None:
    """The pool size TensorFlow uses for a configured value (None: one per core)."""
    if configured:
        return configured
    value = os.environ.get(env, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_threads(intra: int, inter: int) -> None:
    """Set TensorFlow's thread pools, or prune the trial when they are already other ones."""
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already initialised in this process: is it what we want anyway?
        pass
    got = (_effective(threading.get_intra_op_parallelism_threads(), "TF_NUM_INTRAOP_THREADS"),
           _effective(threading.get_inter_op_parallelism_threads(), "TF_NUM_INTEROP_THREADS"))
    if got != (intra, inter):
        shown = ["one per core" if g is None else str(g) for g in got]
        raise TrialPruned(f"runtime tensorflow: cannot set {intra} intra-op / {inter} inter-op "
                          f"threads, TensorFlow already runs in this process with {shown[0]} / "
                          f"{shown[1]} (run the trial in a fresh process, e.g. its notebook)")


class TensorflowSession:
    def __init__(self, path: Path, params, options: dict[str, Any]):
        import tensorflow as tf

        apply_threads(options["intra_op_parallelism_threads"], options["inter_op_parallelism_threads"])
        t0 = time.perf_counter()
        if Path(path).is_dir():  # SavedModel

            self._loaded, sig, in_names, out_name = saved_model_signature(Path(path), options["output"])
            self._names = [in_names] if isinstance(in_names, str) else list(in_names)
            specs = sig.structured_input_signature[1]
            self._fn = tf.function(lambda *xs: sig(**dict(zip(self._names, xs)))[out_name],
                                   input_signature=tuple(tf.TensorSpec(specs[n].shape, specs[n].dtype)
                                                         for n in self._names))
        else:
            import keras

            model = keras.saving.load_model(path, safe_mode=options["safe_mode"])
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


class TensorflowRuntime(Runtime):
    name = "tensorflow"
    formats = ("keras", "savedmodel")
    providers = ("CPU",)
    packages = ("tensorflow", "keras")

    def check_provider(self, params) -> str:
        try:
            return super().check_provider(params)
        except TrialPruned:
            raise TrialPruned(f"runtime tensorflow: provider {params.provider} is not supported "
                              "(this baseline runs on the CPU)") from None

    def session_options(self, params) -> dict[str, Any]:
        return {"device": self.check_provider(params), "intra_op_parallelism_threads": params.threads,
                "inter_op_parallelism_threads": 1, "safe_mode": not params.trust_model_code,
                "output": params.output}

    def open_session(self, path: Path, params) -> TensorflowSession:
        return TensorflowSession(path, params, self.session_options(params))

    def bundle_loader(self, artifact: str) -> str:
        return f'''import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(OPTIONS["intra_op_parallelism_threads"])
    tf.config.threading.set_inter_op_parallelism_threads(OPTIONS["inter_op_parallelism_threads"])
    path = HERE / "{artifact}"
    if path.is_dir():  # SavedModel: its serving_default signature, the trial's scored output
        loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["serving_default"]
        specs = sig.structured_input_signature[1]
        names = list(specs)
        out = OPTIONS["output"]
        out_name = out if isinstance(out, str) else sorted(sig.structured_outputs)[out]
        fn = tf.function(lambda *xs: sig(**dict(zip(names, xs)))[out_name],
                         input_signature=tuple(tf.TensorSpec(specs[n].shape, specs[n].dtype) for n in names))
        fn._keep_alive = loaded  # the signature's variables live as long as the function
    else:
        import keras

        model = keras.saving.load_model(path, safe_mode=OPTIONS["safe_mode"])
        names = [t.name for t in model.inputs]
        fn = tf.function(lambda *xs: model(dict(zip(names, xs)) if len(xs) > 1 else xs[0], training=False),
                         input_signature=tuple(tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs))
    return lambda x: fn(*by_runtime_names(x, names)).numpy()'''

    def doctor(self, context: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "version": versions("tensorflow")["tensorflow"],
                                "keras": versions("keras")["keras"]}
        if info["version"] == "absent":
            return {**info, "usable": False, "why": "tensorflow is not installed"}
        if not context.get("probe_tensorflow", True):
            return {**info, "usable": True, "why": None, "gpus": None}
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        except Exception as err:  # noqa: BLE001 - the doctor never fails

            return {**info, "usable": False, "why": first_line(err)}
        return {**info, "usable": True, "why": None, "gpus": gpus}

    def doctor_lines(self, info: dict[str, Any]) -> list[str]:
        if not info.get("usable"):
            return []
        return [f"keras {info.get('keras')}; GPUs seen by TensorFlow: "
                f"{', '.join(info['gpus']) if info.get('gpus') else 'none'}"]


RUNTIME = register(TensorflowRuntime())
