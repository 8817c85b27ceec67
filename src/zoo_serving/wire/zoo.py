"""The Analytics Zoo v0.9 to v0.11 wire format (Arrow), so clients of the original system work
unchanged (see ``docs/protocol.md``; :mod:`zoo_serving.wire` tells it apart from the others):

- **zoo** (Analytics Zoo v0.9 to v0.11): ``uri`` and ``data``, the base64 of an Arrow IPC
  stream holding one record batch, one column per model input in model-input order (names
  ignored). A tensor column is a struct ``<indiceData, indiceShape, data, shape>`` of lists,
  written as four rows, each filling one child; a ``utf8`` column is a base64 JPEG, or strings
  joined by ``|``. The result is ``HSET cluster-serving_<stream>:<uri> value <v>``: ``v`` is the
  base64 of an Arrow IPC stream with one record batch per output tensor (``data: float32``,
  ``shape: int32``, ``numel`` rows, the shape in the first rows and nulls after), or ``NaN``.

A decoded record is the same :class:`~zoo_serving.wire.native.Request` a native one is: tensors
become float32 tensor inputs, sparse tensors are made dense, images stay encoded images.

pyarrow is imported only when a zoo record is met (``pip install 'zoo-serving[zoo]'``).

Example::

    payload = encode_payload({"t": np.ones((3, 4), np.float32)})   # as the v0.10 client
    decode_payload(payload)[0].value.shape                          # (3, 4)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..errors import (
    DecodeError,
    DtypeError,
    MissingDependencyError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeError,
)
from .native import F_URI, RawInput, Request

F_DATA = b"data"  # base64 Arrow IPC stream
FAILED = b"NaN"  # the result of a record that failed, as the original server wrote it

MAX_DIMS = 32
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHILDREN = ("indiceData", "indiceShape", "data", "shape")

ZooValue = Union[np.ndarray, bytes, list]  # noqa: UP007 - runtime alias


@dataclass(frozen=True)
class ZooInput:
    """One column of a zoo payload, decoded: a float32 ``tensor`` (sparse ones made dense), an
    encoded ``image`` (the JPEG bytes), or ``strings`` (a string tensor, a list of str)."""

    name: str
    kind: str
    value: ZooValue


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401 - binds pa.ipc
    except ImportError:
        raise MissingDependencyError(
            "Analytics Zoo records (a 'data' field of base64 Arrow) need pyarrow: "
            "pip install 'zoo-serving[zoo]'"
        ) from None
    return pa


def decode_record(fields: Mapping[bytes, bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """The :class:`Request` of a zoo stream entry (``uri`` and ``data``).

    Raises:
        InputError: naming what is wrong with the record.
    """
    uri = fields.get(F_URI)
    if uri is None:
        raise MissingInputError("record has no 'uri' field; every record needs one")
    return Request(uri=uri, inputs=[to_raw(i) for i in decode_payload(fields[F_DATA], max_bytes)])


def to_raw(item: ZooInput) -> RawInput:
    """A decoded zoo column as the worker's :class:`RawInput`.

    Raises:
        DtypeError: for a string tensor: the backends here take numeric inputs only.
    """
    if item.kind == "image":
        assert isinstance(item.value, bytes)
        return RawInput(item.name, "image", item.value)
    if item.kind == "strings":
        raise DtypeError(
            f"input {item.name!r}: a string tensor of {len(item.value)} strings (joined by '|'); "
            "the models served here take numeric tensors or images, not strings"
        )
    arr = np.ascontiguousarray(item.value, dtype="<f4")
    return RawInput(item.name, "tensor", arr.tobytes(), "<f4", tuple(arr.shape))


# ---------------------------------------------------------------- payloads


def b64decode(what: str, text: bytes | str, max_bytes: int) -> bytes:
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLargeError(
            f"{what}: {len(raw)} base64 characters is over the limit of {max_bytes} "
            "bytes (data.max_payload_bytes)"
        )
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(
            f"{what}: {len(raw)} characters starting {raw[:16]!r} are not base64"
        ) from None


def decode_payload(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> list[ZooInput]:
    """The columns of a zoo ``data`` field (base64 of an Arrow IPC stream), in order.

    Reads both Arrow IPC stream framings (with the ``0xFFFFFFFF`` continuation marker, and the
    older one without it).

    Raises:
        DecodeError: not base64, not an Arrow stream, or a column that does not decode.
        PayloadTooLargeError: over ``max_bytes``, encoded or as a dense tensor.
    """
    raw = b64decode("field 'data'", data, max_bytes)
    pa = _pyarrow()
    if raw.startswith(b"ARROW1"):
        raise DecodeError(
            "field 'data' holds an Arrow IPC file; send an Arrow IPC stream, as "
            "InputQueue.enqueue of Analytics Zoo does"
        )
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(raw))
        batch = reader.read_next_batch()
    except StopIteration:
        raise DecodeError("field 'data': the Arrow stream holds no record batch") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DecodeError(f"field 'data' is not an Arrow IPC stream: {exc}") from None
    if batch.num_columns == 0:
        raise MissingInputError("field 'data': the record batch has no column (no input)")
    return [
        _column(pa, field.name, field.type, column, max_bytes)
        for field, column in zip(batch.schema, batch.columns)
    ]


def _column(pa: Any, name: str, type_: Any, column: Any, max_bytes: int) -> ZooInput:
    if pa.types.is_struct(type_):
        return ZooInput(name, "tensor", _tensor(pa, name, type_, column, max_bytes))
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        texts = [t for t in column.to_pylist() if t is not None]
        if not texts:
            raise MissingInputError(f"input {name!r}: the string column holds no value")
        text = texts[0]
        if "|" in text:  # never in base64: a string tensor
            return ZooInput(name, "strings", text.split("|"))
        return ZooInput(name, "image", b64decode(f"input {name!r}", text, max_bytes))
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):  # a scalar input
        values = [v for v in column.to_pylist() if v is not None]
        if len(values) != 1:
            raise DecodeError(f"input {name!r}: a scalar column needs one value, has {values[:4]}")
        return ZooInput(name, "tensor", np.asarray(values[0], dtype=np.float32))
    raise DecodeError(
        f"input {name!r}: Arrow type {type_} is not a tensor struct, a string or a number"
    )


def _child_values(pa: Any, name: str, child: str, array: Any) -> np.ndarray:
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise DecodeError(f"input {name!r}: struct child {child!r} is {array.type}, not a list")
    values = array.flatten()  # the values of every non-null row, concatenated
    if values.null_count:
        raise DecodeError(f"input {name!r}: {child!r} holds {values.null_count} null value(s)")
    return values.to_numpy(zero_copy_only=False)


def _tensor(pa: Any, name: str, type_: Any, column: Any, max_bytes: int) -> np.ndarray:
    children = {type_.field(i).name: arr for i, arr in enumerate(column.flatten())}
    if "data" not in children or "shape" not in children:
        raise DecodeError(
            f"input {name!r}: a tensor struct needs 'data' and 'shape' children, has "
            f"{sorted(children)}"
        )
    got = {c: _child_values(pa, name, c, children[c]) for c in _CHILDREN if c in children}
    data = got["data"].astype(np.float32, copy=False)
    shape = _dims(name, "shape", got["shape"])
    indices_shape = got.get("indiceShape", np.empty(0, np.int64))
    if indices_shape.size:
        return densify(
            name, got.get("indiceData", np.empty(0)), indices_shape, data, shape, max_bytes
        )
    count = _count(name, shape, max_bytes)
    if count != data.size:
        raise ShapeError(
            f"input {name!r}: shape {list(shape)} holds {count} values, 'data' has {data.size}"
        )
    return data.reshape(shape)


def _dims(name: str, what: str, values: np.ndarray) -> tuple[int, ...]:
    if values.size > MAX_DIMS:
        raise ShapeError(f"input {name!r}: {what} has {values.size} dims, over {MAX_DIMS}")
    if values.size and (values.dtype.kind not in "iu" or (values < 0).any()):
        raise ShapeError(f"input {name!r}: {what} must be non-negative integers, got {values}")
    return tuple(int(v) for v in values)


def _count(name: str, shape: Sequence[int], max_bytes: int) -> int:
    count = 1
    for d in shape:
        count *= d
    if count * 4 > max_bytes:
        raise PayloadTooLargeError(
            f"input {name!r}: a float32 tensor of shape {list(shape)} takes {count * 4} bytes, "
            f"over the limit of {max_bytes} (data.max_payload_bytes)"
        )
    return count


def densify(
    name: str,
    indices: Any,
    indices_shape: Any,
    values: Any,
    shape: Sequence[int],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """A sparse tensor (COO, zero-based indices) as a dense float32 array.

    ``indices`` holds ``indices_shape`` (two dims) in C order: one index array per dimension
    (``[ndim, nnz]``, the original server's reading), or one index tuple per value
    (``[nnz, ndim]``) when only that shape fits ``shape`` and ``values``. A value given twice
    keeps the last.

    Raises:
        ShapeError: indices that do not fit the shape or the values.
        PayloadTooLargeError: a dense tensor over ``max_bytes``.
    """
    idx_shape = _dims(name, "indiceShape", np.asarray(indices_shape))
    vals = np.asarray(values, dtype=np.float32).ravel()
    ndim, nnz = len(shape), vals.size
    flat = np.asarray(indices).ravel()
    if flat.size and flat.dtype.kind == "f":
        if not np.array_equal(flat, np.floor(flat)):
            raise ShapeError(f"input {name!r}: sparse indices must be integers")
        flat = flat.astype(np.int64)
    if len(idx_shape) != 2 or idx_shape[0] * idx_shape[1] != flat.size:
        raise ShapeError(
            f"input {name!r}: indiceShape {list(idx_shape)} does not describe the "
            f"{flat.size} values of indiceData; expected [ndim, nnz]"
        )
    if idx_shape == (ndim, nnz):
        coords = flat.reshape(ndim, nnz)
    elif idx_shape == (nnz, ndim):
        coords = flat.reshape(nnz, ndim).T
    else:
        raise ShapeError(
            f"input {name!r}: indiceShape {list(idx_shape)} fits neither [ndim, nnz] nor "
            f"[nnz, ndim] for shape {list(shape)} and {nnz} values"
        )
    dense = np.zeros(_count(name, shape, max_bytes), dtype=np.float32).reshape(shape)
    if nnz:
        if ((coords < 0) | (coords >= np.asarray(shape)[:, None])).any():
            raise ShapeError(
                f"input {name!r}: a sparse index is outside shape {list(shape)} "
                "(indices are zero-based)"
            )
        dense[tuple(coords)] = vals
    return dense


def encode_payload(inputs: Mapping[str, Any], *, legacy_framing: bool = False) -> bytes:
    """A zoo ``data`` field (base64 Arrow IPC stream), as Analytics Zoo's client wrote it.

    Args:
        inputs: in model-input order: an ndarray (dense tensor), ``(indices, values, shape)``
            (a sparse tensor, indices ``[ndim, nnz]``), bytes (an encoded image, sent as
            base64), or a list of str (a string tensor).
        legacy_framing: write the Arrow stream without continuation markers (pre-0.15 Arrow).
    """
    pa = _pyarrow()
    tensor = pa.struct(
        [
            pa.field("indiceData", pa.list_(pa.int32())),
            pa.field("indiceShape", pa.list_(pa.int32())),
            pa.field("data", pa.list_(pa.float32())),
            pa.field("shape", pa.list_(pa.int32())),
        ]
    )
    fields: list[Any] = []
    columns: list[list[Any]] = []
    for name, value in inputs.items():
        if isinstance(value, (np.ndarray, np.generic)):
            value = np.asarray(value)
            dense = [[], [], value.astype(np.float32).ravel(), np.asarray(value.shape)]
            columns.append([{c: v} for c, v in zip(_CHILDREN, dense)])
            fields.append(pa.field(name, tensor))
        elif isinstance(value, tuple) and len(value) == 3:
            idx = np.asarray(value[0])
            sparse = [idx.ravel(), idx.shape, np.asarray(value[1], np.float32), value[2]]
            columns.append([{c: v} for c, v in zip(_CHILDREN, sparse)])
            fields.append(pa.field(name, tensor))
        elif isinstance(value, (bytes, bytearray, memoryview)):
            columns.append([base64.b64encode(bytes(value)).decode("ascii")])
            fields.append(pa.field(name, pa.string()))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            columns.append(["|".join(value)])
            fields.append(pa.field(name, pa.string()))
        else:
            raise DecodeError(
                f"input {name!r}: expected an ndarray, (indices, values, shape), image bytes "
                f"or a list of str, got {type(value).__name__}"
            )
    # a string column has one row, a tensor four: pad with nulls so they can share a batch
    # (the original client could not mix them; its server and this one read them the same)
    rows = max((len(c) for c in columns), default=0)
    arrays = [pa.array(c + [None] * (rows - len(c)), type=f.type) for c, f in zip(columns, fields)]
    batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
    return base64.b64encode(_stream_bytes(pa, [batch], batch.schema, legacy_framing))


def _stream_bytes(pa: Any, batches: list[Any], schema: Any, legacy: bool = False) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(use_legacy_format=legacy)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


# ---------------------------------------------------------------- results


def encode_result(outputs: Mapping[str, np.ndarray]) -> bytes:
    """A zoo result: base64 of an Arrow IPC stream, one record batch per output tensor, fields
    ``data: float32`` and ``shape: int32``, ``numel`` rows, the shape in the first rows and
    nulls after (a shape longer than ``numel`` is cut, as the original server's was)."""
    pa = _pyarrow()
    schema = pa.schema([pa.field("data", pa.float32()), pa.field("shape", pa.int32())])
    batches = []
    for arr in outputs.values():
        arr = np.asarray(arr)
        flat = arr.astype(np.float32, copy=False).ravel()
        dims: list[int | None] = [int(d) for d in arr.shape[: flat.size]]
        dims += [None] * (flat.size - len(dims))
        batches.append(
            pa.record_batch([pa.array(flat), pa.array(dims, type=pa.int32())], schema=schema)
        )
    return base64.b64encode(_stream_bytes(pa, batches, schema))


def decode_result(value: bytes | str) -> np.ndarray | list[np.ndarray] | None:
    """A zoo result read back as the original client's ``query()`` does: one ndarray, a list
    of them (several outputs), or None for ``NaN`` (a failed record)."""
    text = value if isinstance(value, bytes) else value.encode()
    if text == FAILED:
        return None
    pa = _pyarrow()
    reader = pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text)))
    arrays = []
    for batch in reader:
        data = batch.column(0).to_numpy()
        shape = [d for d in batch.column(1).to_pylist() if d]
        arrays.append(data.reshape(shape))
    return arrays[0] if len(arrays) == 1 else arrays
