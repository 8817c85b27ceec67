"""A model's stream split in partitions (``data.partitions``), each its own Redis Cluster slot.

Partition streams are :func:`keys.partition_streams`: the first is the stream itself, so one
partition is exactly today's stream, and clients of other protocols, which add to the stream
by name, land in it. Each partition is a complete stream of its own (group, pending entries,
results, uri claims, dead letters, bound), so the complete step of a record touches the one
slot of its partition. Clients pick a record's partition from its uri
(:func:`keys.partition_of`); a worker consumes every partition, in turn.

:func:`open_queue` gives a worker the queue for its config: a :class:`RedisStreamQueue` for
one partition, a :class:`PartitionedQueue` over N of them otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .. import keys
from ..config import DataConfig
from .counts import one_stream_stats
from .queue import Completion, Entry, Queue
from .streams import RedisStreamQueue

MIN_BLOCK_MS = 5  # shortest blocking read of one partition while all are empty


def open_queue(
    client: Any, data: DataConfig, stream: str, consumer: str, claim_idle_ms: int
) -> Queue:
    """The queue a worker of ``stream`` reads, as ``data`` splits it."""
    parts = [
        RedisStreamQueue(
            client,
            part,
            data.group,
            consumer=consumer,
            result_ttl_s=data.result_ttl_s,
            claim_idle_ms=claim_idle_ms,
            replica_acks=data.replica_acks,
            replica_timeout_ms=data.replica_timeout_ms,
        )
        for part in keys.partition_streams(stream, data.partitions)
    ]
    return parts[0] if len(parts) == 1 else PartitionedQueue(parts)


class PartitionedQueue(Queue):
    """One consumer of every partition of a stream.

    A read goes round the partitions without blocking, starting one further each time, and
    returns the first that has entries, so a busy partition cannot starve the others; when
    all are empty it blocks on one of them for its share of the wait. Entries carry their
    partition stream, and everything done with an entry goes to its partition.
    """

    def __init__(self, parts: Sequence[RedisStreamQueue]) -> None:
        self.parts = list(parts)
        for part in self.parts:
            part._tag = part.stream
        self._by_stream = {part.stream: part for part in self.parts}
        self._next = 0

    @property
    def stream(self) -> str:
        return self.parts[0].stream

    def _of(self, entry: Entry) -> RedisStreamQueue:
        return self._by_stream[entry.stream or self.stream]

    def _group(self, entries: Sequence[Any], entry_of: Any) -> dict[str, list[Any]]:
        by: dict[str, list[Any]] = defaultdict(list)
        for item in entries:
            by[entry_of(item).stream or self.stream].append(item)
        return by

    def check_access(self) -> None:
        for part in self.parts:
            part.check_access()

    def setup(self, max_queue_len: int | None = None) -> None:
        """Set up every partition, each with its share of the bound (rounded up), and publish
        the partition count for clients."""
        share = None
        if max_queue_len is not None:
            share = -(-max_queue_len // len(self.parts)) if max_queue_len > 0 else 0
        for part in self.parts:
            part.setup(share)
        self.parts[0].client.set(keys.partitions(self.stream), len(self.parts))

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        n = len(self.parts)
        first = self._next
        self._next = (first + 1) % n
        for k in range(n):
            entries = self.parts[(first + k) % n].read(count, None)
            if entries:
                return entries
        if not block_ms:
            return []
        return self.parts[first].read(count, max(block_ms // n, MIN_BLOCK_MS))

    def dead_letter(self, entry: Entry, reason: str) -> None:
        self._of(entry).dead_letter(entry, reason)

    def drop(self, entries: Sequence[Entry]) -> None:
        for stream, group in self._group(entries, lambda e: e).items():
            self._by_stream[stream].drop(group)

    def complete(self, done: Sequence[Completion]) -> int:
        return sum(
            self._by_stream[stream].complete(group)
            for stream, group in self._group(done, lambda c: c.entry).items()
        )

    def refresh(self) -> list[bytes]:
        return [eid for part in self.parts for eid in part.refresh()]

    def release(self, entries: Sequence[Entry]) -> None:
        for stream, group in self._group(entries, lambda e: e).items():
            self._by_stream[stream].release(group)

    def holds(self, entry: Entry) -> bool:
        return self._of(entry).holds(entry)

    def held_count(self) -> int:
        """Records read and not yet completed or released, over every partition."""
        return sum(part.held_count() for part in self.parts)

    def pending(self) -> int:
        """Entries delivered and not yet completed, over every partition."""
        return sum(part.pending() for part in self.parts)

    def close(self) -> None:
        self.parts[0].close()  # they share one client


def published_partitions(client: Any, stream: str, default: int) -> int:
    """The partition count the server of ``stream`` published, else ``default`` (the client's
    own ``data.partitions``: no server has set the stream up yet)."""
    return partition_count(client.get(keys.partitions(stream)), default)


def partition_count(raw: bytes | str | None, default: int) -> int:
    """The partition count in ``raw`` (the value of ``keys.partitions``), else ``default``."""
    try:
        return max(int(raw), 1) if raw is not None else default
    except ValueError:
        return default


def stream_stats(client: Any, stream: str, group: str) -> dict[str, int]:
    """Queued, lag (not yet delivered), pending (delivered, not answered) and dead-letter
    counts of a stream, over all its partitions; what ``zoo-serve status`` and the Prometheus
    gauges show.

    Raises:
        QueueError: Redis refused a count (see :func:`.counts.one_stream_stats`).
    """
    total = {"queued": 0, "lag": 0, "pending": 0, "dead_letter": 0}
    for part in keys.partition_streams(stream, published_partitions(client, stream, 1)):
        for name, value in one_stream_stats(client, part, group).items():
            total[name] += value
    return total
