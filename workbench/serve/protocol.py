"""Open Inference Protocol (KServe v2) over REST: request parsing and response encoding.

Three request bodies are understood:

* JSON tensors: ``{"inputs": [{"name", "shape", "datatype": "FP32", "data": [...]}]}`` (one per
  model input; several are matched by name);
* the v2 binary-data extension: header ``Inference-Header-Content-Length: N``, the first N
  bytes are the JSON header (the input carries ``"parameters": {"binary_data_size": k}``), the
  raw little-endian tensor bytes follow;
* a raw ``.npy`` array with ``Content-Type: application/octet-stream`` (answered with ``.npy``).

Anything malformed raises :class:`BadRequest`, which the server answers with 400 and a one-line
JSON error; the server itself never sees a half-parsed tensor. Everything a client controls is
checked before inference, because an error found after it (an ``outputs`` that is not a list)
wastes the batch and used to be a 500: JSON nested too deeply, shapes (non-negative integers, not
booleans; their product with :func:`math.prod`, never a wrapping numpy product, and no more
elements than the body has bytes), the types of ``name``, ``datatype``, ``parameters``,
``outputs`` and ``id``, and the values of a numeric tensor (numbers only: no ``null``, strings,
booleans, ``NaN`` or ``Infinity``; floats finite in every form, JSON, binary or ``.npy``).
"""

from __future__ import annotations

import io
import json
import math
from itertools import chain
from typing import Any

import numpy as np
import orjson

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
             "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
NPY = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 32  # numpy's own limit in 1.x; no model input comes near it
MAX_ROWS = 1024  # rows in one request, every engine
_JSON_NAMES = {type(None): "null", str: "a string", bool: "true/false", dict: "an object", int: "an integer",
               float: "a number"}


class BadRequest(ValueError):
    """The body is not a valid inference request for this model (HTTP 400)."""


_DTYPES = {name: np.dtype(t) for name, t in DATATYPES.items()}
_DATATYPE_OF = {dtype: name for name, dtype in _DTYPES.items()}
# the JSON values each kind of tensor takes (anything else is refused, never converted)
_ALLOWED = {"b": frozenset({bool}), "i": frozenset({int}), "u": frozenset({int}), "f": frozenset({int, float})}


def datatype_of(dtype: np.dtype) -> str:
    return _DATATYPE_OF.get(np.dtype(dtype), "BYTES")


Spec = tuple  # (name or None, sample shape, numpy dtype name): workbench.data.inputs.specs


def _check(x: np.ndarray, spec: Spec, max_rows: int, what: str) -> np.ndarray:
    name, sample_shape, dtype = spec
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadRequest(f"{what}: holds NaN or infinite values")
    if x.dtype != np.dtype(dtype):
        raise BadRequest(f"{what}: datatype {datatype_of(x.dtype)} is not accepted: the model input is "
                         f"{datatype_of(np.dtype(dtype))}")
    if x.shape[1:] != tuple(sample_shape) or x.ndim != len(sample_shape) + 1:
        raise BadRequest(f"{what}: shape {list(x.shape)} does not match the model's {[-1, *sample_shape]}")
    if not 1 <= x.shape[0] <= max_rows:
        raise BadRequest(f"{what}: batch of {x.shape[0]} rows: must be 1..{max_rows}")
    return np.ascontiguousarray(x)


def _flat(data: list, what: str) -> tuple[list, set[type]]:
    """The values of ``data`` (flat or nested row-major lists), checked to be one level of lists
    per dimension, at most :data:`MAX_DIMS` deep, never ragged between lists and values; and the
    set of their types (one pass over the values serves both checks)."""
    level = data
    for _ in range(MAX_DIMS):
        types = set(map(type, level))
        if list not in types:
            return level, types
        if types != {list}:
            raise BadRequest(f"{what} mixes lists and values at one level")
        level = list(chain.from_iterable(level))
    raise BadRequest(f"{what} is nested deeper than {MAX_DIMS} levels")


def _values(data: list, dtype: np.dtype, datatype: str, what: str) -> np.ndarray:
    """The array of JSON ``data``: numbers for numeric datatypes (integers for integer ones),
    true/false for BOOL; anything else (null, strings, booleans) is refused, never converted."""
    flat, types = _flat(data, what)
    wrong = types - _ALLOWED[dtype.kind]
    if wrong:
        names = sorted(_JSON_NAMES.get(t, t.__name__) for t in wrong)
        raise BadRequest(f"{what} holds {', '.join(names)}: a {datatype} tensor takes "
                         + ("true/false" if dtype.kind == "b" else "integers" if dtype.kind in "iu" else "numbers"))
    try:
        with np.errstate(over="raise"):
            return np.asarray(flat, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        raise BadRequest(f"{what} has values outside the range of {datatype}") from None


def _dict_or_none(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def _check_header(header: dict[str, Any]) -> None:
    """The request-level fields read after inference, checked before it."""
    _dict_or_none(header.get("parameters"), "parameters")
    if "id" in header and not isinstance(header["id"], str):
        raise BadRequest("id must be a string")
    outputs = header.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise BadRequest("outputs must be a list of objects")
    for i, o in enumerate(outputs):
        if not isinstance(o, dict):
            raise BadRequest(f"outputs[{i}] must be an object")
        if "name" in o and not isinstance(o["name"], str):
            raise BadRequest(f"outputs[{i}].name must be a string")
        _dict_or_none(o.get("parameters"), f"outputs[{i}].parameters")


def _tensor(tensor: Any, i: int, raw: bytes, at: int, bound: int) -> tuple[str | None, np.ndarray, int]:
    """One JSON (or binary-data) input tensor; returns its name, array and the raw bytes used.
    ``bound``: the most elements the body could hold (its size in bytes)."""
    if not isinstance(tensor, dict):
        raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype and data")
    shape, datatype, name = tensor.get("shape"), tensor.get("datatype"), tensor.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest(f"inputs[{i}].name must be a string")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise BadRequest(f"inputs[{i}].shape must be a list of at most {MAX_DIMS} non-negative integers")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"inputs[{i}].datatype {str(datatype)[:40]!r} is not a v2 numeric datatype")
    dtype = _DTYPES[datatype]
    if any(s > bound for s in shape) or (size := math.prod(shape)) > bound:  # each dimension first: no huge product
        raise BadRequest(f"inputs[{i}].shape holds more elements than the body of {bound} bytes can")
    params = _dict_or_none(tensor.get("parameters"), f"inputs[{i}].parameters")
    if "binary_data_size" in params:
        n = params["binary_data_size"]
        if type(n) is not int or n != size * dtype.itemsize or at + n > len(raw):
            raise BadRequest(f"inputs[{i}]: binary_data_size {str(n)[:40]} does not hold shape {shape} of {datatype} "
                             f"in the {len(raw) - at} bytes left")
        x = np.frombuffer(raw[at:at + n], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
        return name, x, n
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"inputs[{i}].data must be a list")
    x = _values(data, dtype, datatype, f"inputs[{i}].data")
    if x.size != size:
        raise BadRequest(f"inputs[{i}].data has {x.size} values but shape {shape} needs {size}")
    return name, x.reshape(shape), 0


def json_tensor(tensor: Any, i: int, bound: int) -> tuple[str | None, np.ndarray]:
    """One JSON input tensor (``{"name", "shape", "datatype", "data"}``) that a server decoded
    itself (KServe's), checked exactly as a body's are: no value converted (a string or ``true``
    in FP32 data is refused), data filling its shape. ``bound``: the most elements it may hold."""
    name, x, _ = _tensor(tensor, i, b"", 0, bound)
    return name, x


def parse(body: bytes, content_type: str, headers: dict[str, str], specs: list[Spec],
          max_rows: int) -> tuple[Any, dict[str, Any]]:
    """The model inputs of a request (one array; a dict by name for a model with several) and
    its JSON header (``{"binary": "npy"}`` for ``.npy`` bodies)."""
    if content_type.split(";")[0].strip().lower() == NPY and HEADER_LENGTH not in headers:
        if len(specs) != 1:
            raise BadRequest(f"a .npy body holds one array; the model has {len(specs)} inputs (send JSON)")
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy raises several kinds for a bad file
            raise BadRequest(f"body is not a .npy array ({type(err).__name__})") from None
        return _check(x, specs[0], max_rows, "input"), {"binary": "npy"}
    raw = b""
    if HEADER_LENGTH in headers:
        try:
            n = int(headers[HEADER_LENGTH])
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        body, raw = body[:n], body[n:]
    header = loads(body)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest('body must be {"inputs": [tensors]}')
    _check_header(header)
    tensors = header["inputs"]
    if len(tensors) != len(specs):
        raise BadRequest(f"{len(tensors)} input tensors given; the model has {len(specs)}")
    got, at = {}, 0
    for i, t in enumerate(tensors):
        name, x, used = _tensor(t, i, raw, at, max(len(body) + len(raw), 1))
        at += used
        got[name if len(specs) > 1 else None] = x
    if at != len(raw):
        raise BadRequest(f"{len(raw) - at} bytes of binary data belong to no input")
    return model_inputs(got, specs, max_rows), header


def model_inputs(got: dict[str | None, np.ndarray], specs: list[Spec], max_rows: int) -> Any:
    """The model's inputs from the decoded tensors (``{None: array}`` for a model with one input,
    else by name), each checked against its spec: exactly the model's datatype (never cast: FP64
    into an FP32 model is refused), its sample shape, finite floats, 1..``max_rows`` rows. Every
    engine and protocol (REST, gRPC in :mod:`workbench.serve.grpc_server`, the kserve engine)
    checks what it decoded here, so all refuse the same.
    """
    if len(specs) == 1:
        return _check(got[None], specs[0], max_rows, "input")
    out = {}
    for spec in specs:
        if spec[0] not in got:
            raise BadRequest(f"input {spec[0]!r} is missing (the model's inputs: {', '.join(s[0] for s in specs)})")
        out[spec[0]] = _check(got[spec[0]], spec, max_rows, f"input {spec[0]!r}")
    if len({len(v) for v in out.values()}) > 1:
        raise BadRequest("the input tensors have different numbers of rows")
    return out


def loads(body: bytes) -> Any:
    """JSON of a request body, with orjson (the standard library took half the engine's own time
    per request on a small body): invalid JSON, invalid UTF-8, ``NaN``/``Infinity`` (not JSON),
    integers beyond 64 bits and nesting deeper than orjson's 1024 levels are :class:`BadRequest`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"body is not valid JSON ({str(err).split(':')[0][:80]})") from None


def wants_binary(header: dict[str, Any]) -> bool:
    """The request asked for binary outputs (v2 binary-data extension)."""
    if (header.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in header.get("outputs") or []
               if isinstance(o, dict))


def encode(y: np.ndarray, header: dict[str, Any], model: str, output_name: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the answer, in the form the request came in."""
    if header.get("binary") == "npy":
        buf = io.BytesIO()
        np.save(buf, y, allow_pickle=False)
        return buf.getvalue(), {"content-type": NPY}
    out: dict[str, Any] = {"name": output_name, "shape": list(y.shape), "datatype": datatype_of(y.dtype)}
    answer: dict[str, Any] = {"model_name": model, "outputs": [out]}
    if "id" in header:
        answer["id"] = header["id"]
    if wants_binary(header):
        raw = np.ascontiguousarray(y).astype(y.dtype.newbyteorder("<")).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps(answer)
        return head + raw, {"content-type": NPY, "inference-header-content-length": str(len(head))}
    # orjson writes numbers straight from the array (float32 in its shortest form, which reads back
    # as the same float32); anything else as Python objects
    out["data"] = np.ascontiguousarray(y).reshape(-1) if y.dtype.kind in "biuf" else y.reshape(-1).tolist()
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": "application/json"}


def request_json(x: Any, name: str = "input") -> bytes:
    """A JSON inference request for batch ``x`` (an array, or a dict of named arrays)."""
    items = x.items() if isinstance(x, dict) else [(name, x)]
    return json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": datatype_of(v.dtype),
                                   "data": v.reshape(-1).tolist()} for k, v in items]},
                      separators=(",", ":")).encode()


def request_npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def response_array(body: bytes, content_type: str, headers: dict[str, str] | None = None) -> np.ndarray:
    """The first output tensor of an answer, whichever form it came in."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    if HEADER_LENGTH in headers:
        n = int(headers[HEADER_LENGTH])
        out = json.loads(body[:n])["outputs"][0]
        dtype = np.dtype(DATATYPES[out["datatype"]]).newbyteorder("<")
        return np.frombuffer(body[n:], dtype=dtype).reshape(out["shape"])
    if content_type.split(";")[0].strip().lower() == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False)
    out = json.loads(body)["outputs"][0]
    return np.asarray(out["data"], dtype=DATATYPES.get(out["datatype"], np.float32)).reshape(out["shape"])
