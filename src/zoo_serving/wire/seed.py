"""The seed-era wire format: stream ``image_stream``, fields ``uri`` and ``image`` (a base64
JPEG, resized by the client); the result is ``HSET result:<uri> value <v>`` where ``v`` is the
top-N ``[[class_index, probability], ...]`` as JSON (or the output tensors as nested lists when
there is no top-N to give), or ``NaN`` when the record failed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import MissingInputError
from .native import F_URI, RawInput, Request
from .zoo import DEFAULT_MAX_BYTES, b64decode

F_IMAGE = b"image"  # base64 JPEG


def decode_record(fields: Mapping[bytes, bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """The :class:`Request` of a seed-era stream entry: one image input named ``image``.

    Raises:
        InputError: naming what is wrong with the record.
    """
    uri = fields.get(F_URI)
    if uri is None:
        raise MissingInputError("record has no 'uri' field; every record needs one")
    jpeg = b64decode("field 'image'", fields[F_IMAGE], max_bytes)
    return Request(uri=uri, inputs=[RawInput("image", "image", jpeg)])


def encode_result(
    outputs: Mapping[str, np.ndarray], pairs: Sequence[tuple[int, float]] | None
) -> bytes:
    """A seed-era result: the top-N ``pairs`` (best first) when there are some, else the
    record's output tensor(s) as nested JSON lists."""
    if pairs is not None:
        value: Any = [[i, p] for i, p in pairs]
    else:
        lists = [np.asarray(v).tolist() for v in outputs.values()]
        value = lists[0] if len(lists) == 1 else lists
    return json.dumps(value, separators=(",", ":")).encode()
