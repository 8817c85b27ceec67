"""What the threads' and the asyncio clients share on the way in: records cut into calls of
the add script, what an add that stopped short means, and the ``predict`` records."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from ..broker.producer import FULL, TAKEN, Added, Outgoing
from ..errors import QueueError, ResultTimeoutError, UriInUseError, ZooServingError
from ..wire import native
from ..wire.native import ResultValue, decode_result
from .common import named

CHUNK = 64  # most records per round trip
CHUNK_BYTES = 4 << 20  # and most payload bytes: the add script copies its arguments, and
# Redis counts them against maxmemory while it holds them


def chunks(records: Iterable[Outgoing]) -> Iterator[list[Outgoing]]:
    """Records in calls of at most :data:`CHUNK` records and :data:`CHUNK_BYTES`."""
    chunk: list[Outgoing] = []
    size = 0
    for record in records:
        record_size = sum(len(v) for v in record.fields.values())
        if chunk and size + record_size > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += record_size
        if len(chunk) == CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def check_added(added: Added, left: list[Outgoing], accepted: list[str], stream: str) -> None:
    """Raise for an add that stopped short for another reason than a full stream (or Redis's
    memory): the uri in use, or Redis's refusal."""
    if added.why == TAKEN:
        raise UriInUseError(
            f"uri {left[0].uri!r} is in use on stream {stream}: a record sent "
            "with it is still queued, or its result waits to be fetched "
            "(OutputQueue.query or dequeue takes it; it expires after "
            "data.result_ttl_s); use another uri, or fetch that result first",
            accepted=list(accepted),
            uri=left[0].uri,
        )
    if added.why != FULL and not added.out_of_memory:
        raise QueueError(
            f"Redis refused record {left[0].uri!r} on stream {stream}: {added.why}",
            accepted=list(accepted),
        )


def check_replicated(
    added: Added, records: list[Outgoing], accepted: list[str], stream: str, data: Any
) -> None:
    """Raise QueueError when ``added`` records reached fewer replicas than
    ``data.replica_acks`` within ``data.replica_timeout_ms``."""
    if added.count and added.acked < data.replica_acks:
        raise QueueError(
            f"records on stream {stream} reached {added.acked} replica(s) within "
            f"data.replica_timeout_ms={data.replica_timeout_ms}, data.replica_acks is "
            f"{data.replica_acks}: they are on the master, and a failover now may lose them; "
            "retry them under new uris, or check the replicas",
            accepted=list(accepted),
            unconfirmed=[r.uri for r in records[: added.count]],
        )


def full_message(added: Added, stream: str) -> str:
    if added.out_of_memory:
        return (
            f"Redis is out of memory (maxmemory reached: {added.why}); stream "
            f"{stream} takes no more records until workers answer queued ones and "
            "their results are fetched; retry later, pass wait_if_full_s to wait, or give "
            "Redis more memory"
        )
    return (
        f"stream {stream} holds {added.length} unprocessed records and the server's "
        f"bound (data.max_queue_len) is {added.bound}; retry later, pass wait_if_full_s "
        "to wait, or raise the bound"
    )


class Tokens:
    """Tokens of the records of one inbox: a random prefix and a count. Only the inbox's
    owner reads it (its id is the secret), so a token need only be unique within it; a
    reply key (protocol 2) gets a random token instead."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:8]
        self._count = itertools.count(1)

    def take(self, n: int) -> list[bytes]:
        return [f"{self.prefix}{next(self._count):x}".encode() for _ in range(n)]


def private_records(
    batch: list[Any],
    timeout: float,
    inbox: str | None,
    tokens_of: Tokens | None = None,
    place: Any = None,
    model_version: int | None = None,
) -> tuple[list[bytes], list[Outgoing]]:
    """Tokens and records for ``predict``: each record answered to its sender alone, in the
    inbox ``inbox`` (protocol 3, tokens from ``tokens_of``) or, without one, at its own
    reply key (protocol 2, random tokens). ``place(inputs)``, when given, may put large
    tensors in shared memory (returns the inputs to send). ``model_version``: the model
    version every record asks for (default: the newest served)."""
    deadline_ms = int((time.time() + timeout) * 1000)
    if inbox is None or tokens_of is None:
        tokens = [uuid.uuid4().hex.encode() for _ in batch]
    else:
        tokens = tokens_of.take(len(batch))
    box = None if inbox is None else inbox.encode()
    records = []
    for token, x in zip(tokens, batch):
        uri = b"predict-" + token
        inputs = named(x)
        if place is not None:
            inputs = place(inputs)
        fields = native.encode_request(
            uri,
            inputs,
            deadline_ms,
            views=True,
            reply_to=token,
            inbox=box,
            model_version=model_version,
        )
        records.append(Outgoing(fields, uri.decode(), public=False))
    return tokens, records


def results_of(blobs: list[bytes | None], tokens: list[bytes], timeout: float) -> list[ResultValue]:
    """Decoded results in token order.

    Raises:
        ResultTimeoutError: some are missing (``details["missing"]``: how many).
    """
    missing = sum(b is None for b in blobs)
    if missing:
        what = (
            f"no result for predict-{tokens[0].decode()} within {timeout}s; is a server running?"
            if len(tokens) == 1
            else f"{missing} of {len(tokens)} results missing after {timeout}s"
        )
        raise ResultTimeoutError(what, missing=missing)
    out: list[ResultValue] = []
    for blob in blobs:
        assert blob is not None
        try:
            out.append(decode_result(blob))
        except ZooServingError as exc:
            out.append(exc)
    return out


def new_arena(client: Any, shared_memory: int | bool) -> Any:
    """The shared memory arena a client asked for (``shared_memory``: bytes, or True for the
    default size), or None."""
    if not shared_memory:
        return None
    from ..shm.arena import DEFAULT_BYTES, Arena

    nbytes = DEFAULT_BYTES if shared_memory is True else int(shared_memory)
    return Arena(client.data, client.url, client.stream, nbytes)
