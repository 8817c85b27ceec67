"""What a request may make the front door hold, checked before it is held: the body's bytes
as they stream in (chunked or not), the JSON's nesting before it is parsed, and each
payload's bytes before it is enqueued (a tensor's shape is checked in :mod:`.bodies`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PayloadTooLargeError
from .bodies import HttpError, Record, bad

MAX_JSON_DEPTH = 64  # a 32-dim tensor nested in a v2 body is 35 deep
MAX_JSON_CONTAINERS = 1_000_000  # parsed in about a second; a nested 3x224x224 image has 676
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes and all
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 1 << 22  # brackets counted per numpy pass


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, read as it streams in; a 413 as soon as it passes ``limit`` bytes,
    whether it declares a Content-Length or comes chunked."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(f"a body of {length} bytes is over the limit", limit, "it was not read")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large("the body is over the limit", limit, "it was not read further")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, limit: int, then: str) -> HttpError:
    why = "4 x data.max_payload_bytes, at least 1 MiB"
    return HttpError(413, f"{what} of {limit} bytes ({why}); {then}", PayloadTooLargeError.code)


def json_nesting(body: bytes) -> tuple[int, int]:
    """How deep the arrays and objects of a JSON text nest, and how many there are, counted
    without parsing it (strings, and the brackets in them, are skipped)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    deepest = depth = opened = 0
    for start in range(0, len(brackets), _CHUNK):
        part = np.frombuffer(brackets, np.uint8, min(_CHUNK, len(brackets) - start), start)
        opens = (part == ord("[")) | (part == ord("{"))
        running = np.cumsum(np.where(opens, 1, -1)) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
        opened += int(np.count_nonzero(opens))
    return deepest, opened


def parse_json(body: bytes) -> Any:
    """The JSON of a request body; a 400 saying where it breaks, or that it nests deeper than
    :data:`MAX_JSON_DEPTH` or holds more than :data:`MAX_JSON_CONTAINERS` arrays and objects
    (both checked first: Python's parser recurses once per level, and a body of empty arrays
    becomes twenty times its size in Python objects)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        depth = containers = 0  # too few brackets to nest too deep: no need to count them
    else:
        depth, containers = json_nesting(body)
    if depth > MAX_JSON_DEPTH:
        raise bad(f"the JSON nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    if containers > MAX_JSON_CONTAINERS:
        raise bad(
            f"the JSON holds {containers} arrays and objects, over the limit of "
            f"{MAX_JSON_CONTAINERS}; send tensor data flat (row-major), not nested"
        )
    try:
        return json.loads(body)
    except RecursionError:  # not reached past the depth check; kept so it can never be a 500
        raise bad(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise bad(f"the body is not valid JSON: {exc}") from None


def check_payloads(records: Sequence[Record], max_bytes: int) -> None:
    """A 413 for a record whose payload is over ``max_bytes`` (``data.max_payload_bytes``),
    before it goes to Redis: the worker would refuse it after reading it."""
    for i, record in enumerate(records):
        for name, value in record.items():
            size = value.nbytes if isinstance(value, np.ndarray) else len(value)
            if size > max_bytes:
                where = f"record {i}: " if len(records) > 1 else ""
                raise HttpError(
                    413,
                    f"{where}input {name!r}: {size} bytes is over the limit of {max_bytes} "
                    "(data.max_payload_bytes)",
                    PayloadTooLargeError.code,
                )
