"""The wire: what records and results look like in Redis, in each protocol a client may speak.

Three protocols share one input stream, told apart per record (:func:`reply_kind`):

- :mod:`.native`: this project's own, version 1 (raw tensor bytes, JSON top-N, error codes);
- :mod:`.zoo`: Analytics Zoo v0.9 to v0.11 clients (base64 Arrow in and out);
- :mod:`.seed`: the seed-era client (stream ``image_stream``, a base64 JPEG in, JSON top-N out).

This module is the one place that dispatches on a record's protocol: how its fields decode
(:func:`decode_record`), how its answer and its failure encode (:func:`encode_results`,
:func:`encode_failure`), and where its result goes (:func:`result_place`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import keys
from . import native, seed, zoo
from .native import Request
from .zoo import FAILED

__all__ = [
    "FAILED",
    "HASH",
    "INBOX",
    "LIST",
    "NATIVE",
    "PRIVATE",
    "SEED",
    "ZOO",
    "ResultPlace",
    "decode_record",
    "encode_failure",
    "encode_results",
    "reply_kind",
    "result_key",
    "result_place",
]

NATIVE = "native"  # reply kinds: where and how a record's result is written
ZOO = "zoo"
SEED = "seed"

LIST = "list"  # a result written as a one-element list (and its uri to the finished list)
HASH = "hash"  # a result written as the field ``value`` of a hash
PRIVATE = "private"  # a result written as a one-element list its sender alone waits on
INBOX = "inbox"  # a result appended, after its token, to its sender's inbox list

Pairs = list[tuple[int, float]]  # one record's top-N answer, best first


@dataclass(frozen=True)
class ResultPlace:
    """Where a record's result goes: the key, how it is written there (:data:`LIST`,
    :data:`PRIVATE`, :data:`INBOX` or :data:`HASH`), for :data:`LIST` the uri's claim key,
    which the write drops when this record holds it, and for :data:`INBOX` the prefix that
    goes before the result (the record's ``reply_to`` token and a newline)."""

    key: bytes
    how: str
    claim: bytes | None = None
    prefix: bytes = b""


def reply_kind(fields: Mapping[bytes, bytes]) -> str:
    """The protocol of a stream entry: native when it has ``zs``; else zoo with a ``data``
    field, seed with an ``image`` field; else native (which then names what is missing)."""
    if native.F_VERSION in fields:
        return NATIVE
    if zoo.F_DATA in fields:
        return ZOO
    if seed.F_IMAGE in fields:
        return SEED
    return NATIVE


def decode_record(
    fields: Mapping[bytes, bytes], kind: str, max_bytes: int = zoo.DEFAULT_MAX_BYTES
) -> Request:
    """The :class:`~.native.Request` of a stream entry of protocol ``kind``.

    Raises:
        InputError: naming what is wrong with the record.
    """
    if kind == ZOO:
        return zoo.decode_record(fields, max_bytes)
    if kind == SEED:
        return seed.decode_record(fields, max_bytes)
    return native.decode_request(fields)


def encode_results(
    outputs: Mapping[str, np.ndarray],
    batch: int,
    pairs: Sequence[Pairs] | None,
    replies: Sequence[str] | None = None,
    origin: tuple[str, int] | None = None,
) -> list[bytes]:
    """The encoded result of each record of a batch.

    Args:
        outputs: the model's outputs, one row per record.
        batch: how many records.
        pairs: each record's top-N answer, or None where the answer is the output tensors.
        replies: each record's protocol (native for all when None): native records get the
            top-N or their tensors, Analytics Zoo records always their tensors in Arrow,
            seed-era records the top-N (or their tensors) as JSON.
        origin: the model name and version that answered, named in native results.
    """
    named = native.origin_fields(*origin) if origin else ""
    if replies is None or all(r == NATIVE for r in replies):
        if pairs is not None:
            return [native.encode_topn(p, named) for p in pairs]
        return [
            native.encode_tensors({k: v[i] for k, v in outputs.items()}, named)
            for i in range(batch)
        ]
    out = []
    for i, reply in enumerate(replies):
        record = {k: v[i] for k, v in outputs.items()}
        answer = None if pairs is None else pairs[i]
        if reply == ZOO:
            out.append(zoo.encode_result(record))
        elif reply == SEED:
            out.append(seed.encode_result(record, answer))
        elif answer is not None:
            out.append(native.encode_topn(answer, named))
        else:
            out.append(native.encode_tensors(record, named))
    return out


def encode_failure(kind: str, exc: BaseException) -> bytes:
    """The error result of a record of protocol ``kind``: the native error (code, message), or
    ``NaN`` for zoo and seed-era clients, whose format has no room for more."""
    return native.encode_exception(exc) if kind == NATIVE else FAILED


def result_place(
    kind: str,
    stream: str,
    uri: bytes,
    fields: Mapping[bytes, bytes] | None = None,
    partition: str | None = None,
) -> ResultPlace:
    """Where and how the result of a record of protocol ``kind`` is written; ``fields`` (the
    stream entry's) send a native version-2 record with ``reply_to`` to its private key, and a
    version-3 one with ``inbox`` too to its sender's inbox. ``partition``: the partition
    stream the record was read from (``data.partitions`` > 1): native results go to its keys;
    the other protocols' keys are named after ``stream``."""
    if kind == ZOO:
        return ResultPlace(keys.zoo_result(stream, uri), HASH)
    if kind == SEED:
        return ResultPlace(keys.seed_result(uri), HASH)
    stream = partition or stream
    token = None if fields is None else native.reply_token(fields)
    inbox = None if token is None or fields is None else native.reply_inbox(fields)
    if token is not None and inbox is not None:
        return ResultPlace(keys.inbox(stream, inbox), INBOX, prefix=token + b"\n")
    if token is not None:
        return ResultPlace(keys.reply(stream, token), PRIVATE)
    return ResultPlace(keys.result(stream, uri), LIST, keys.uri_claim(stream, uri))


def result_key(
    kind: str, stream: str, uri: bytes, fields: Mapping[bytes, bytes] | None = None
) -> bytes:
    """The key the result of a record of protocol ``kind`` goes to."""
    return result_place(kind, stream, uri, fields).key
