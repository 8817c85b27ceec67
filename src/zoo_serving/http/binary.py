"""Triton's binary tensor data extension of KServe v2 (what ``tritonclient`` sends with
``binary_data=True``).

A request body is a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw
C-order bytes of every input whose ``parameters`` say ``binary_data_size``, in input order.
An answer holds an output's bytes in binary when the request asks for it (the output's
``parameters: {"binary_data": true}``, or the request's ``parameters:
{"binary_data_output": true}``): its JSON then says ``binary_data_size`` and has no ``data``,
and the bytes follow the JSON header in output order; the answer's
``Inference-Header-Content-Length`` says where the header ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .bodies import V2_DTYPES, bad, json_tensor
from .limits import parse_json

HEADER_LENGTH = "inference-header-content-length"


def split_body(raw: bytes, header_length: str | None) -> tuple[Any, memoryview | None]:
    """The JSON of a request body and its binary part (None without the header)."""
    if header_length is None:
        return parse_json(raw), None
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise bad(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"body of {len(raw)} bytes"
        )
    size = int(header_length)
    return parse_json(raw[:size]), memoryview(raw)[size:]


def binary_size(where: str, spec: Mapping[str, Any]) -> int | None:
    """An input's ``parameters.binary_data_size``, if it has one."""
    params = spec.get("parameters")
    if not isinstance(params, Mapping) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(f"{where}: parameters.binary_data_size must be a byte count, got {size!r}")
    return size


class BinaryInputs:
    """Hands out the inputs' tensors from a request's binary part, in input order (the
    ``data`` of :func:`~.bodies.parse_v2_inputs`); an input without ``binary_data_size``
    has its data in the JSON."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def __call__(
        self, where: str, spec: Mapping[str, Any], datatype: str, shape: list[int]
    ) -> np.ndarray:
        size = binary_size(where, spec)
        if size is None:
            if "data" not in spec:
                raise bad(f"{where}: 'data' is missing, and no parameters.binary_data_size")
            return json_tensor(where, spec["data"], datatype, shape)
        arr = binary_tensor(where, self.data, self.offset, size, datatype, shape)
        self.offset += size
        return arr

    def check_used(self) -> None:
        if self.offset != len(self.data):
            raise bad(
                f"the binary part holds {len(self.data)} bytes, but the inputs' "
                f"binary_data_size add up to {self.offset}"
            )


def binary_tensor(
    where: str, data: memoryview, offset: int, size: int, datatype: str, shape: list[int]
) -> np.ndarray:
    """An input's tensor from the binary part (no copy)."""
    dtype = V2_DTYPES[datatype]
    count = math.prod(shape)  # shape_count checked it fits an int64
    if count * dtype.itemsize != size:
        raise bad(
            f"{where}: binary_data_size {size} does not hold {datatype} {shape}, which takes "
            f"{count * dtype.itemsize} bytes"
        )
    if offset + size > len(data):
        raise bad(
            f"{where}: the binary part ends at byte {len(data)}, before this input's "
            f"{size} bytes from byte {offset}"
        )
    arr = np.frombuffer(data[offset : offset + size], dtype=dtype.newbyteorder("<"))
    if dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise bad(f"{where}: BOOL bytes must be 0 or 1")
    return arr.reshape(shape)


def binary_outputs(body: Mapping[str, Any]) -> tuple[bool, set[str]]:
    """Whether every output goes in binary (``parameters.binary_data_output``), and which
    outputs ask for it by name."""
    params = body.get("parameters")
    everything = isinstance(params, Mapping) and params.get("binary_data_output") is True
    named: set[str] = set()
    for out in body.get("outputs") or ():
        if isinstance(out, Mapping) and isinstance(out.get("name"), str):
            p = out.get("parameters")
            if isinstance(p, Mapping) and p.get("binary_data") is True:
                named.add(out["name"])
    return everything, named


def encode_answer(
    content: dict[str, Any], arrays: Sequence[np.ndarray], binary: tuple[bool, set[str]]
) -> tuple[bytes, int | None]:
    """The body of an infer answer (``content`` with ``outputs`` filled from ``arrays``), and
    the length of its JSON header when some outputs went in binary (else None)."""
    everything, named = binary
    blobs = []
    outputs = []
    for spec, arr in zip(content["outputs"], arrays):
        if everything or spec["name"] in named:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            outputs.append({**spec, "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        else:
            outputs.append({**spec, "data": arr.ravel().tolist()})
    header = json.dumps({**content, "outputs": outputs}, separators=(",", ":"), allow_nan=True)
    if not blobs:
        return header.encode(), None
    head = header.encode()
    return b"".join([head, *blobs]), len(head)
