"""Native results (see :mod:`.native` and ``docs/protocol.md``): a JSON header, then for
tensors ``\\n`` and the C-order bytes of every output; ``model`` and ``version`` name what
produced an answer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import DecodeError, ZooServingError, error_from_code


def origin_fields(model: str | None, version: int | None) -> str:
    """The ``"model":...,"version":...`` part of a result header (with its leading comma), or
    "" when there is nothing to name."""
    if model is None:
        return ""
    return f',"model":{json.dumps(model)},"version":{int(version or 0)}'


def encode_topn(pairs: list[tuple[int, float]], origin: str = "") -> bytes:
    """A top-N result: ``[[class_index, probability], ...]``, best first; ``origin`` is
    :func:`origin_fields` of the model that answered.

    The same bytes as ``json.dumps`` of ``{"v": 1, "kind": "topn", ...origin, "value": pairs}``
    with compact separators, written out directly: a server answering 10,000 records a second
    spends too long in the generic encoder.
    """
    body = ",".join([f"[{int(i)},{_json_float(p)}]" for i, p in pairs])
    return f'{{"v":1,"kind":"topn"{origin},"value":[{body}]}}'.encode()


def _json_float(x: float) -> str:
    """``x`` as JSON writes it (``float.__repr__``); NaN and infinities, which JSON lacks,
    as readable strings."""
    x = float(x)
    return repr(x) if math.isfinite(x) else f'"{x}"'


def encode_tensors(outputs: Mapping[str, np.ndarray], origin: str = "") -> bytes:
    """A tensor result: header, newline, then the C-order bytes of each output in order;
    ``origin`` is :func:`origin_fields` of the model that answered."""
    meta = []
    blobs = []
    for name, arr in outputs.items():
        arr = np.asarray(arr)  # a numpy scalar (a [batch] output's row) becomes 0-d
        meta.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        blobs.append(arr.tobytes())
    outs = json.dumps(meta, separators=(",", ":"))
    header = f'{{"v":1,"kind":"tensor"{origin},"outputs":{outs}}}'
    return b"\n".join([header.encode(), b"".join(blobs)])


def encode_error(code: str, message: str) -> bytes:
    """An error result with a stable code and a message saying what was wrong."""
    body = {"v": 1, "kind": "error", "code": code, "message": message}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_exception(exc: BaseException) -> bytes:
    if isinstance(exc, ZooServingError):
        return encode_error(exc.code, exc.message or str(exc))
    return encode_error("server", f"{type(exc).__name__}: {exc}")


ResultValue = Union[list, np.ndarray, dict, ZooServingError]  # noqa: UP007 - runtime alias


@dataclass(frozen=True)
class Result:
    """A result with what produced it: the value (as :func:`decode_result` gives it), and the
    model and version that answered (None for an error, or from a server that names none)."""

    value: ResultValue
    model: str | None = None
    version: int | None = None


def decode_full(blob: bytes) -> Result:
    """The value of a result and the model and version that produced it."""
    head = blob.partition(b"\n")[0]
    value = decode_result(blob)
    try:
        meta = json.loads(head)
    except ValueError:
        return Result(value)
    version = meta.get("version")
    return Result(value, meta.get("model"), int(version) if version is not None else None)


def decode_result(blob: bytes) -> ResultValue:
    """The value of a result: a top-N list, an ndarray (one output) or a dict of them, or the
    :class:`ZooServingError` the server stored for a failed record (returned, not raised)."""
    head, sep, body = blob.partition(b"\n")
    try:
        meta = json.loads(head)
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError):
        raise DecodeError(f"not a zoo_serving result: {blob[:64]!r}") from None
    if kind == "topn":
        return [[int(i), float(p)] for i, p in meta["value"]]
    if kind == "error":
        return error_from_code(meta.get("code", "server"), meta.get("message", ""))
    if kind == "tensor":
        out: dict[str, np.ndarray] = {}
        view = memoryview(body)
        offset = 0
        for item in meta["outputs"]:
            dtype = np.dtype(item["dtype"])
            count = int(np.prod(item["shape"], dtype=np.int64))
            nbytes = count * dtype.itemsize
            out[item["name"]] = np.frombuffer(view[offset : offset + nbytes], dtype=dtype).reshape(
                item["shape"]
            )
            offset += nbytes
        return next(iter(out.values())) if len(out) == 1 else out
    raise DecodeError(f"unknown result kind {kind!r}")
