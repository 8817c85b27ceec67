"""JSON bodies of the HTTP front door <-> records and results (no web framework here).

Two request shapes (see ``docs/http.md``):

- Cluster Serving's ``{"instances": [{name: value, ...}, ...]}``: one record per instance;
  numbers and nested lists are tensors, a string is a base64 image, ``{"b64": ...}`` too,
  ``{"shape", "data", "indices"}`` a sparse tensor;
- KServe v2 / Open Inference Protocol ``{"inputs": [{"name", "shape", "datatype", "data"}]}``:
  a leading batch dimension (one more than the model's per-record rank) is split into records.

Every problem is an :class:`HttpError` with a status and a message naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ZooServingError
from ..wire.zoo import MAX_DIMS, densify

# KServe v2 tensor datatypes and the numpy dtypes they map to (BYTES is not supported)
V2_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_V2_NAMES = {dtype: name for name, dtype in V2_DTYPES.items()}
_V2_BY_STR = {dtype.str: name for name, dtype in V2_DTYPES.items()}
MAX_ELEMENTS = 2**63 - 1  # the most values a numpy array holds
TOPN_OUTPUT = "topn"  # the v2 output holding a top-N answer: [[class_index, probability], ...]

Record = dict[str, Any]  # input name -> ndarray (tensor) or bytes (encoded image)


class HttpError(Exception):
    """A request the front door answers with ``status`` and ``{"error": message, "code"}``."""

    def __init__(self, status: int, message: str, code: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def bad(message: str) -> HttpError:
    return HttpError(400, message)


def dumps(content: Any) -> bytes:
    """JSON of a response; non-finite floats are written as NaN / Infinity, as Python reads."""
    return json.dumps(content, separators=(",", ":"), allow_nan=True).encode()


# ---------------------------------------------------------------- numbers


def _numbers(where: str, data: Any, dtype: np.dtype) -> np.ndarray:
    """``data`` (a number or nested lists of them) as an array of ``dtype``, or a 400."""
    try:
        raw = np.asarray(data)
    except ValueError:
        raise bad(f"{where}: nested lists of different lengths (a ragged tensor)") from None
    if raw.dtype.kind not in "biuf":
        raise bad(f"{where}: expected numbers for {v2_name(dtype)}, got {_sample(data)}")
    if dtype.kind == "b" and raw.dtype.kind != "b" and raw.size:
        raise bad(f"{where}: datatype BOOL takes true/false, got {_sample(data)}")
    if dtype.kind in "iu" and raw.size:
        if raw.dtype.kind == "f" and not np.array_equal(raw, np.floor(raw)):
            raise bad(f"{where}: datatype {v2_name(dtype)} takes integers, got {_sample(data)}")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise bad(
                f"{where}: values from {raw.min()} to {raw.max()} do not fit "
                f"{v2_name(dtype)} ({info.min} to {info.max})"
            )
    return raw.astype(dtype)


def _sample(data: Any) -> str:
    text = json.dumps(data)
    return text if len(text) <= 60 else text[:57] + "..."


def v2_name(dtype: np.dtype) -> str:
    if isinstance(dtype, np.dtype):
        name = _V2_BY_STR.get(dtype.str)  # a dict look-up: hashing a dtype costs more
        if name is not None:
            return name
    return _V2_NAMES.get(np.dtype(dtype), str(dtype))


# ---------------------------------------------------------------- Cluster Serving /predict


def parse_instances(body: Any, input_dtypes: Sequence[np.dtype] = ()) -> list[Record]:
    """The records of a ``{"instances": [...]}`` body.

    Numbers become float32 tensors, or the model's integer / bool dtype where
    ``input_dtypes`` (model-input order) asks for one.
    """
    if not isinstance(body, Mapping) or "instances" not in body:
        raise bad('expected {"instances": [{"<input name>": <value>, ...}, ...]}')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise bad('"instances" must be a non-empty list of objects, one per record')
    records = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, Mapping) or not instance:
            raise bad(f"instances[{i}]: expected an object of input name -> value")
        record: Record = {}
        for pos, (name, value) in enumerate(instance.items()):
            want = input_dtypes[pos] if pos < len(input_dtypes) else np.dtype(np.float32)
            record[str(name)] = _instance_value(f"instances[{i}].{name}", value, want)
        records.append(record)
    return records


def _instance_value(where: str, value: Any, want: np.dtype) -> np.ndarray | bytes:
    if isinstance(value, str):
        if "|" in value:
            raise bad(f"{where}: string tensors are not supported; the models served take numbers")
        return _b64(where, value)
    if isinstance(value, Mapping):
        if "b64" in value:
            return _b64(where, value["b64"])
        if {"shape", "data", "indices"} <= set(value):
            return _sparse(where, value)
        raise bad(f'{where}: an object must be {{"b64": ...}} or {{"shape", "data", "indices"}}')
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        raise bad(f"{where}: string tensors are not supported; the models served take numbers")
    dtype = want if want.kind in "biu" else np.dtype(np.float32)
    try:
        return _numbers(where, value, dtype)
    except HttpError:
        if dtype.kind == "f":
            raise
        return _numbers(where, value, np.dtype(np.float32))  # the worker names the dtype clash


def _b64(where: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise bad(f"{where}: an image is a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{where}: not base64 (an image is sent as base64 of its JPEG/PNG)") from None


def _sparse(where: str, value: Mapping[str, Any]) -> np.ndarray:
    indices = _numbers(f"{where}.indices", value["indices"], np.dtype(np.int64))
    shape = _numbers(f"{where}.shape", value["shape"], np.dtype(np.int64))
    data = _numbers(f"{where}.data", value["data"], np.dtype(np.float32))
    if indices.ndim != 2 or shape.ndim != 1:
        raise bad(f"{where}: indices must be [ndim][nnz] lists and shape a list of dims")
    try:
        return densify(where, indices, indices.shape, data, shape.tolist())
    except ZooServingError as exc:
        raise bad(exc.message) from None


def predictions(results: Sequence[Any]) -> dict[str, Any]:
    """The ``/predict`` answer, in Cluster Serving's own form: each prediction is the JSON text
    of ``{"value": <JSON text of the result>}``; a tensor result is ``{"data": [...flat],
    "shape": [...]}`` (a list of them for several outputs), a top-N ``[[index, prob], ...]``."""
    out = []
    for result in results:
        if isinstance(result, np.ndarray):
            value: Any = _data_shape(result)
        elif isinstance(result, Mapping):
            value = [_data_shape(v) for v in result.values()]
        else:
            value = result
        out.append(json.dumps({"value": json.dumps(value)}))
    return {"predictions": out}


def _data_shape(arr: np.ndarray) -> dict[str, Any]:
    return {"data": arr.ravel().tolist(), "shape": list(arr.shape)}


# ---------------------------------------------------------------- KServe v2


def parse_v2_inputs(
    body: Any, data: Callable[[str, Mapping[str, Any], str, list[int]], np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Named input tensors of a v2 infer body, and the names of the outputs asked for.

    ``data(where, spec, datatype, shape)`` gives an input's tensor where its ``data`` is not
    in the JSON (Triton's binary extension, :mod:`.binary`); None: every input's is."""
    if not isinstance(body, Mapping):
        raise bad('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad('"inputs" must be a non-empty list of {"name", "shape", "datatype", "data"}')
    tensors: dict[str, np.ndarray] = {}
    for i, spec in enumerate(inputs):
        name, arr = _v2_tensor(i, spec, data)
        if name in tensors:
            raise bad(f"inputs[{i}]: input {name!r} is given twice")
        tensors[name] = arr
    wanted = None
    if body.get("outputs") is not None:
        outs = body["outputs"]
        if not isinstance(outs, list) or not all(
            isinstance(o, Mapping) and isinstance(o.get("name"), str) for o in outs
        ):
            raise bad('"outputs" must be a list of {"name": <output name>}')
        wanted = [o["name"] for o in outs]
    return tensors, wanted


def _v2_tensor(i: int, spec: Any, data: Any = None) -> tuple[str, np.ndarray]:
    where = f"inputs[{i}]"
    if not isinstance(spec, Mapping):
        raise bad(f"{where}: expected an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}: 'name' must be a non-empty string")
    where = f"{where} ({name!r})"
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    datatype = spec.get("datatype")
    if datatype == "BYTES":
        raise bad(f"{where}: datatype BYTES is not supported; the models served take numbers")
    if datatype not in V2_DTYPES:
        raise bad(
            f"{where}: datatype {datatype!r} is not one of {', '.join(V2_DTYPES)}",
        )
    count = shape_count(where, shape)
    if data is not None:
        return name, data(where, spec, datatype, shape)
    if "data" not in spec:
        raise bad(f"{where}: 'data' is missing")
    return name, json_tensor(where, spec["data"], datatype, shape, count)


def json_tensor(
    where: str, data: Any, datatype: str, shape: list[int], count: int | None = None
) -> np.ndarray:
    """A v2 input's ``data`` (flat or nested numbers) as an array of ``datatype`` and
    ``shape``; a 400 when they do not fit."""
    count = shape_count(where, shape) if count is None else count
    arr = _numbers(where, data, V2_DTYPES[datatype])
    if arr.size != count:
        raise bad(f"{where}: shape {shape} holds {count} values, but 'data' has {arr.size}")
    return arr.reshape(shape)


def shape_count(where: str, shape: Sequence[int]) -> int:
    """The number of values a tensor of ``shape`` holds; a 400 for more than ``MAX_DIMS`` dims
    or for more values than numpy can index (2**63 - 1; zero dims aside)."""
    if len(shape) > MAX_DIMS:
        raise bad(f"{where}: {len(shape)} dims is over the limit of {MAX_DIMS}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise bad(f"{where}: shape {shape} has more values than an int64 counts (2**63 - 1)")
    return math.prod(shape)


def split_batch(
    tensors: Mapping[str, np.ndarray], record_ranks: Mapping[str, int] | Sequence[int]
) -> tuple[list[Record], bool]:
    """Records of a v2 request: a tensor one rank above the model's per-record rank has a
    batch dimension, split into records; else the request is one record. Returns the records
    and whether they were batched. ``record_ranks``: by input name, or in model-input order."""
    names = list(tensors)
    if isinstance(record_ranks, Mapping) and all(n in record_ranks for n in names):
        ranks = [record_ranks[n] for n in names]
    else:
        ranks = list(record_ranks.values() if isinstance(record_ranks, Mapping) else record_ranks)
    batched = [n for n, r in zip(names, ranks) if tensors[n].ndim == r + 1 and tensors[n].ndim > 0]
    if not batched:
        return [dict(tensors)], False
    sizes = {tensors[n].shape[0] for n in batched}
    if len(batched) != len(names) or len(sizes) != 1:
        raise bad(
            "inputs disagree on the batch dimension: "
            + ", ".join(f"{n} {list(tensors[n].shape)}" for n in names)
        )
    size = sizes.pop()
    if size == 0:
        raise bad("the batch dimension is 0: nothing to infer")
    return [{n: tensors[n][j] for n in names} for j in range(size)], True


def v2_outputs(
    results: Sequence[Any],
    output_names: Sequence[str],
    batched: bool,
    wanted: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """v2 output tensors of the records' results (stacked on a batch dimension when
    ``batched``), their data as JSON lists. A top-N answer is the output ``topn``, FP32
    ``[k, 2]`` per record."""
    specs, arrays = v2_output_arrays(results, output_names, batched, wanted)
    return [{**spec, "data": arr.ravel().tolist()} for spec, arr in zip(specs, arrays)]


def v2_output_arrays(
    results: Sequence[Any],
    output_names: Sequence[str],
    batched: bool,
    wanted: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """As :func:`v2_outputs`, the specs (``name``, ``shape``, ``datatype``) without data, and
    the arrays beside them."""
    per_record: list[dict[str, np.ndarray]] = []
    for result in results:
        if isinstance(result, np.ndarray):
            name = output_names[0] if output_names else "output"
            per_record.append({name: result})
        elif isinstance(result, Mapping):
            per_record.append(dict(result))
        else:
            per_record.append({TOPN_OUTPUT: np.asarray(result, dtype=np.float32).reshape(-1, 2)})
    names = list(per_record[0])
    if wanted is not None:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise bad(f"outputs {unknown} are not among the model's outputs {names}")
        names = list(wanted)
    specs, arrays = [], []
    for name in names:
        rows = [r[name] for r in per_record]
        arr = np.stack(rows) if batched else rows[0]
        specs.append({"name": name, "shape": list(arr.shape), "datatype": v2_name(arr.dtype)})
        arrays.append(arr)
    return specs, arrays


def v2_output_specs(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The outputs ``infer`` answers with and accepts in ``outputs``, as v2 metadata: the
    model's own, or the one output ``topn`` (FP32 ``[batch, k, 2]``) when the workers answer
    with the top-N (``info["top_n"]``, published by the workers with the model)."""
    n = int(info.get("top_n") or 0)
    if n > 0 and info["outputs"]:
        classes = [d for d in info["outputs"][0]["shape"][1:] if d != 1]
        k = min(n, classes[0]) if len(classes) == 1 and classes[0] > 0 else -1
        return [{"name": TOPN_OUTPUT, "datatype": "FP32", "shape": [-1, k, 2]}]
    return [v2_tensor_spec(s) for s in info["outputs"]]


def v2_tensor_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A model input/output spec (numpy dtype string) as v2 metadata."""
    return {
        "name": spec["name"],
        "datatype": v2_name(np.dtype(spec["dtype"])),
        "shape": list(spec["shape"]),
    }
