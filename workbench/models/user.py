"""Bring-your-own models: a ``.keras`` file, a SavedModel directory or an ``.onnx`` file.

:func:`build` turns one into a model cache entry like the builtin ones (see :mod:`workbench.models.builtin`):
the model copied in (so the cache never points at a file the user may change), ``reference.npy``
(its fp32 outputs on the eval split, computed by its own framework) and ``meta.json`` with
``"format"``, the quality on the eval split and the input shape. Everything a user can get wrong
(missing or corrupt file, code in a ``.keras`` file, a model that does not fit the data) is a
one-line :class:`~workbench.core.errors.WorkbenchError` naming the file.

Several inputs (float32/float16/int32/int64/bool) are matched to the data by name (see
:mod:`workbench.data` for the ``x_eval.<name>`` layout). A model with several outputs is scored
on the one the experiment's ``output:`` names (a name or an index, default the first); the cache
entry keeps only that output's subgraph, which is then what every variant deploys and measures.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import DataError, ModelError, first_line
from workbench.data import Dataset
from workbench.data import inputs as inputs_mod
from workbench.models.modeldir import keras_inputs, quality

RECIPE = 2  # bump when what build() writes changes
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
    return first_line(err)


def _dims(shape) -> str:
    return "(batch, " + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape) + ")"


def check_inputs(name: str, model_inputs: list[dict[str, Any]], data: Dataset) -> None:
    """Refuse a model whose inputs do not take the data's samples: one line naming the input,
    the expected and the found shape or dtype. ``model_inputs`` are ``{"name", "shape" (without
    the batch dimension), "dtype"}``; a single data array fits a single input of any name."""
    found = data.inputs
    if len(model_inputs) != len(found) or (data.multi_input and
                                           {i["name"] for i in model_inputs} != {n for n, _, _ in found}):
        want = ", ".join(str(i["name"]) for i in model_inputs)
        have = ", ".join(str(n) for n, _, _ in found) if data.multi_input else "one array x_eval"
        hint = (f" (several inputs: give x_eval.<name> arrays for {want})"
                if len(model_inputs) > 1 and not data.multi_input else "")
        raise DataError(f"model {name} has {len(model_inputs)} input(s) ({want}) but data "
                        f"{data.name} has {have}{hint}")
    by_name = {n: (s, d) for n, s, d in found}
    for spec in model_inputs:
        shape, dtype = by_name[spec["name"]] if data.multi_input else found[0][1:]
        label = f"model {name} input {spec['name']}" if spec["name"] else f"model {name}"
        dims = list(spec["shape"])
        fits = len(dims) == len(shape) and all(
            d is None or isinstance(d, str) or d < 0 or d == e for d, e in zip(dims, shape))
        if not fits:
            raise DataError(f"{label} expects shape {_dims(dims)} but data {data.name} has samples "
                            f"of shape {tuple(shape)}")
        if spec["dtype"] != dtype:
            raise DataError(f"{label} expects dtype {spec['dtype']} but data {data.name} has {dtype} "
                            "(convert the data: workbench feeds it as given)")


def check_input(name: str, shape: list, dtype: str, data: Dataset) -> None:
    """:func:`check_inputs` for a model with one input (``shape`` with its batch dimension)."""
    check_inputs(name, [{"name": None, "shape": list(shape)[1:], "dtype": dtype}], data)


def select_output(path: Path, output: str | int, names: list[str]) -> int:
    """The index of the scored output among ``names`` (``output``: a name or an index)."""
    if isinstance(output, str) and not output.isdigit():
        if output not in names:
            raise ModelError(f"output: {path.name} has no output {output!r} "
                             f"(outputs: {', '.join(names)})")
        return names.index(output)
    index = int(output)
    if not 0 <= index < len(names):
        raise ModelError(f"output: {path.name} has {len(names)} output(s) ({', '.join(names)}); "
                         f"index {index} is out of range")
    return index


def _batches(fn, x) -> np.ndarray:
    n = inputs_mod.rows(x)
    return np.concatenate([np.asarray(fn(inputs_mod.take(x, i, i + EVAL_BATCH)), dtype=np.float32)
                           for i in range(0, n, EVAL_BATCH)])


def _output_names(model) -> list[str]:
    """A Keras model's output names (Sequential models have no ``output_names``)."""
    return list(getattr(model, "output_names", None) or
                [t._keras_history[0].name for t in model.outputs])


def _keras(path: Path, data: Dataset, out: Path, trust: bool, output: str | int) -> dict[str, Any]:
    import keras

    extra: dict[str, Any] = {}
    if path.is_file() and not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ModelError(f"{path}: not a Keras model file (a .keras file is a zip archive; this "
                         "one is not)")
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
    inputs = keras_inputs(model)
    check_inputs(path.name, inputs, data)
    if len(model.outputs) > 1:  # keep the scored output's subgraph: what is deployed and measured
        import keras

        names = _output_names(model)
        index = select_output(path, output, names)
        extra.update(output=names[index], outputs=names)
        model = keras.Model(model.inputs, model.outputs[index], name=model.name)
        model.save(out / "model.keras")
    else:
        select_output(path, output, _output_names(model))
        shutil.copyfile(path, out / "model.keras")
    reference = model.predict(data.x_eval, batch_size=EVAL_BATCH, verbose=0)
    return {"reference": reference, "params": int(model.count_params()), "name": model.name,
            "model_input_shape": list(model.inputs[0].shape), "inputs": inputs, **extra}


def saved_model_signature(path: Path, output: str | int = 0):
    """(loaded object, serving function, input names, scored output name) of a SavedModel.
    With one input, the third item is that input's name (a str), otherwise the list of names."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:
        raise ModelError(f"{path}: cannot load the SavedModel ({_first_line(err)})") from None
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no serving_default signature")
    inputs = list(sig.structured_input_signature[1])
    outputs = sorted(sig.structured_outputs)
    out_name = outputs[select_output(path, output, outputs)]
    return loaded, sig, inputs[0] if len(inputs) == 1 else inputs, out_name


def _savedmodel(path: Path, data: Dataset, out: Path, trust: bool, output: str | int) -> dict[str, Any]:
    loaded, sig, in_names, out_name = saved_model_signature(path, output)
    specs = sig.structured_input_signature[1]
    names = [in_names] if isinstance(in_names, str) else in_names
    inputs = [{"name": n, "shape": specs[n].shape.as_list()[1:], "dtype": specs[n].dtype.name}
              for n in names]
    check_inputs(path.name, inputs, data)
    shutil.copytree(path, out / "saved_model")

    def run(b):
        feed = dict(zip(names, inputs_mod.by_runtime_names(b, names)))
        return sig(**feed)[out_name].numpy()

    reference = _batches(run, data.x_eval)
    params = int(sum(np.prod(v.shape) for v in getattr(loaded, "variables", [])))
    return {"reference": reference, "params": params, "name": path.name,
            "model_input_shape": specs[names[0]].shape.as_list(), "inputs": inputs,
            "signature_input": in_names, "signature_output": out_name}


ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8", "tensor(bool)": "bool"}


def check_onnx(path: Path):
    """The parsed, checked ONNX model; a corrupt or invalid file is a one-line ModelError."""
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:  # DecodeError, ValidationError, ...
        raise ModelError(f"{path}: not a valid ONNX model ({_first_line(err)})") from None
    return proto


def _onnx(path: Path, data: Dataset, out: Path, trust: bool, output: str | int) -> dict[str, Any]:
    import onnxruntime as ort

    proto = check_onnx(path)
    extra: dict[str, Any] = {}
    names = [o.name for o in proto.graph.output]
    index = select_output(path, output, names)
    if len(names) > 1:  # keep the scored output only; onnxruntime drops the nodes it no longer needs
        keep = proto.graph.output[index]
        del proto.graph.output[:]
        proto.graph.output.append(keep)
        extra.update(output=names[index], outputs=names)
    target = out / "model.onnx"
    if len(names) > 1:
        target.write_bytes(proto.SerializeToString())
    else:
        shutil.copyfile(path, target)
    try:
        sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ModelError(f"{path}: onnxruntime cannot load it ({_first_line(err)})") from None
    inputs = [{"name": i.name, "shape": [d if isinstance(d, int) else None for d in i.shape[1:]],
               "dtype": ONNX_DTYPES.get(i.type, i.type)} for i in sess.get_inputs()]
    check_inputs(path.name, inputs, data)
    first = sess.get_inputs()[0].shape
    batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
    if batch is not None and batch != 1:
        raise ModelError(f"{path}: the batch dimension is fixed to {batch}; export it with a "
                         "dynamic (or size-1) batch dimension")
    in_names = [i["name"] for i in inputs]

    def run(b):
        return sess.run(None, dict(zip(in_names, inputs_mod.by_runtime_names(b, in_names))))[0]

    n = data.n_eval
    reference = (np.concatenate([run(data.take("eval", i, i + 1)) for i in range(n)])
                 if batch == 1 else _batches(run, data.x_eval))
    params = int(sum(np.prod(t.dims) for t in proto.graph.initializer))
    return {"reference": reference, "params": params, "name": proto.graph.name or path.stem,
            "model_input_shape": [batch, *inputs[0]["shape"]], "inputs": inputs,
            "fixed_batch": batch, **extra}


def build(path: Path, fmt: str, data: Dataset, out: Path, trust: bool, output: str | int = 0) -> None:
    """Write the model cache entry of the user model ``path`` (format ``fmt``) for ``data``,
    scoring its output ``output`` (a name or an index; models with one output ignore 0)."""
    info = {"keras": _keras, "savedmodel": _savedmodel, "onnx": _onnx}[fmt](path, data, out, trust, output)
    reference = np.asarray(info.pop("reference"), dtype=np.float32)
    if len(reference) != data.n_eval:
        raise ModelError(f"{path}: returned {len(reference)} outputs for {data.n_eval} samples")
    if data.task == "classification" and (reference.ndim != 2 or reference.shape[1] <= int(data.y_eval.max())):
        raise DataError(f"model {path.name} outputs shape {reference.shape[1:]} per sample but data "
                        f"{data.name} has class labels up to {int(data.y_eval.max())} "
                        "(task classification needs one score per class)")
    np.save(out / "reference.npy", reference)
    meta = {**quality(reference, data), "task": data.task, "format": fmt,
            "input_shape": list(data.input_shape), "source": str(path.resolve()), **info}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
