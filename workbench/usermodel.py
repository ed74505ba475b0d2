"""Bring-your-own models: a ``.keras`` file, a SavedModel directory or an ``.onnx`` file.

:func:`build` turns one into a model cache entry like the builtin ones (see :mod:`workbench.zoo`):
the model copied in (so the cache never points at a file the user may change), ``reference.npy``
(its fp32 outputs on the eval split, computed by its own framework) and ``meta.json`` with
``"format"``, the quality on the eval split and the input shape. Everything a user can get wrong
(missing or corrupt file, code in a ``.keras`` file, a model that does not fit the data) is a
one-line :class:`~workbench.errors.WorkbenchError` naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data import Dataset
from workbench.errors import DataError, ModelError

RECIPE = 1  # bump when what build() writes changes
PACKAGES = {"keras": ("tensorflow", "keras"), "savedmodel": ("tensorflow", "keras"),
            "onnx": ("onnx", "onnxruntime")}
EVAL_BATCH = 256


def detect(path: Path) -> str:
    """The format of a user model path: "keras" | "savedmodel" | "onnx"."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelError(f"{path}: a directory but not a SavedModel (no saved_model.pb in it)")
    if path.suffix == ".keras":
        return "keras"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".h5":
        raise ModelError(f"{path}: legacy HDF5 Keras files are not supported; re-save it as .keras")
    raise ModelError(f"{path}: unknown model format (expected a .keras file, a SavedModel "
                     "directory or an .onnx file)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def check_input(name: str, shape: list, dtype: str, data: Dataset) -> None:
    """Refuse a model whose (single) input does not take the data's samples, naming both."""
    dims = list(shape)[1:]
    fits = len(dims) == len(data.input_shape) and all(
        d is None or isinstance(d, str) or d < 0 or d == e for d, e in zip(dims, data.input_shape))
    if not fits:
        dims = [str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape[1:]]
        raise DataError(f"model {name} expects inputs of shape (batch, {', '.join(dims)}) but data "
                        f"{data.name} has samples of shape {data.input_shape}")
    if dtype != "float32":
        raise DataError(f"model {name} takes {dtype} inputs but data {data.name} is float32 "
                        "(workbench feeds float32 samples)")


def _batches(fn, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + EVAL_BATCH]), dtype=np.float32)
                           for i in range(0, len(x), EVAL_BATCH)])


def _keras(path: Path, data: Dataset, out: Path, trust: bool) -> dict[str, Any]:
    import keras

    extra: dict[str, Any] = {}
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except ValueError as err:
        if "safe_mode" not in str(err):
            raise ModelError(f"{path}: cannot load the Keras model ({_first_line(err)})") from None
        what = ("contains a Lambda layer (Python code)" if "Lambda" in str(err)
                else "contains Python code that safe_mode refuses")
        if not trust:
            raise ModelError(f"{path}: {what}; refusing to load it (set trust_model_code: true "
                             "in the experiment if you trust this file)") from None
        model = keras.saving.load_model(path, safe_mode=False)
        extra["unsafe"] = what
    except Exception as err:  # zip, h5 or deserialisation errors of every kind
        raise ModelError(f"{path}: cannot load the Keras model ({_first_line(err)})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{path}: models with one input and one output are supported "
                         f"(this one has {len(model.inputs)} and {len(model.outputs)})")
    check_input(path.name, list(model.inputs[0].shape), str(model.inputs[0].dtype), data)
    shutil.copyfile(path, out / "model.keras")
    reference = model.predict(data.x_eval, batch_size=EVAL_BATCH, verbose=0)
    return {"reference": reference, "params": int(model.count_params()), "name": model.name,
            "model_input_shape": list(model.inputs[0].shape), **extra}


def saved_model_signature(path: Path):
    """(loaded object, serving function, input name, output name) of a SavedModel."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:
        raise ModelError(f"{path}: cannot load the SavedModel ({_first_line(err)})") from None
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no serving_default signature")
    inputs = sig.structured_input_signature[1]
    outputs = sig.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: signatures with one input and one output are supported "
                         f"(serving_default has {len(inputs)} and {len(outputs)})")
    return loaded, sig, next(iter(inputs)), next(iter(outputs))


def _savedmodel(path: Path, data: Dataset, out: Path, trust: bool) -> dict[str, Any]:
    loaded, sig, in_name, out_name = saved_model_signature(path)
    spec = sig.structured_input_signature[1][in_name]
    check_input(path.name, spec.shape.as_list(), spec.dtype.name, data)
    shutil.copytree(path, out / "saved_model")
    reference = _batches(lambda b: sig(**{in_name: b})[out_name].numpy(), data.x_eval)
    params = int(sum(np.prod(v.shape) for v in getattr(loaded, "variables", [])))
    return {"reference": reference, "params": params, "name": path.name,
            "model_input_shape": spec.shape.as_list(), "signature_input": in_name,
            "signature_output": out_name}


ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8"}


def check_onnx(path: Path):
    """The parsed, checked ONNX model; a corrupt or invalid file is a one-line ModelError."""
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:  # DecodeError, ValidationError, ...
        raise ModelError(f"{path}: not a valid ONNX model ({_first_line(err)})") from None
    return proto


def _onnx(path: Path, data: Dataset, out: Path, trust: bool) -> dict[str, Any]:
    import onnxruntime as ort

    proto = check_onnx(path)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ModelError(f"{path}: onnxruntime cannot load it ({_first_line(err)})") from None
    if len(sess.get_inputs()) != 1:
        raise ModelError(f"{path}: models with one input are supported "
                         f"(this one has {len(sess.get_inputs())})")
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    check_input(path.name, shape, ONNX_DTYPES.get(inp.type, inp.type), data)
    batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    if batch is not None and batch != 1:
        raise ModelError(f"{path}: the batch dimension is fixed to {batch}; export it with a "
                         "dynamic (or size-1) batch dimension")
    shutil.copyfile(path, out / "model.onnx")
    run = lambda b: sess.run(None, {inp.name: b})[0]  # noqa: E731
    reference = (np.concatenate([run(data.x_eval[i:i + 1]) for i in range(len(data.x_eval))])
                 if batch == 1 else _batches(run, data.x_eval))
    params = int(sum(np.prod(t.dims) for t in proto.graph.initializer))
    return {"reference": reference, "params": params, "name": proto.graph.name or path.stem,
            "model_input_shape": shape, "fixed_batch": batch}


def build(path: Path, fmt: str, data: Dataset, out: Path, trust: bool) -> None:
    """Write the model cache entry of the user model ``path`` (format ``fmt``) for ``data``."""
    from workbench import zoo

    info = {"keras": _keras, "savedmodel": _savedmodel, "onnx": _onnx}[fmt](path, data, out, trust)
    reference = np.asarray(info.pop("reference"), dtype=np.float32)
    if len(reference) != len(data.x_eval):
        raise ModelError(f"{path}: returned {len(reference)} outputs for {len(data.x_eval)} samples")
    if data.task == "classification" and (reference.ndim != 2 or reference.shape[1] <= int(data.y_eval.max())):
        raise DataError(f"model {path.name} outputs shape {reference.shape[1:]} per sample but data "
                        f"{data.name} has class labels up to {int(data.y_eval.max())} "
                        "(task classification needs one score per class)")
    np.save(out / "reference.npy", reference)
    meta = {**zoo.quality(reference, data), "task": data.task, "format": fmt,
            "input_shape": list(data.input_shape), "source": str(path.resolve()), **info}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
