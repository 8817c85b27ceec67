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

import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import keys
from ..config import DataConfig
from .connection import is_cluster
from .counts import one_stream_stats
from .queue import Completion, Entry, Queue
from .streams import RedisStreamQueue


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
    returns the first that has entries, so a busy partition cannot starve the others. When
    all are empty it waits for the first entry on any of them: on one Redis with one blocking
    read of every partition; on a Redis Cluster (partitions in different slots cannot share a
    command) with a blocking read of each partition on a thread of its own
    (:class:`_Waiters`). (A blocking read of one partition for "its share of the wait" does
    not work: Redis ends a blocking read's timeout only at its next ``hz`` tick, 100 ms by
    default, while a record on another partition waits.) Entries carry their partition
    stream, and everything done with an entry goes to its partition.
    """

    def __init__(self, parts: Sequence[RedisStreamQueue]) -> None:
        self.parts = list(parts)
        for part in self.parts:
            part._tag = part.stream
        self._by_stream = {part.stream: part for part in self.parts}
        self._next = 0
        self._waiters = _Waiters(self.parts) if is_cluster(self.parts[0].client) else None

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
        if self._waiters is not None:
            entries = self._waiters.take()  # what a blocking read got since the last call
            if entries:
                return entries
        entries = self._round(count)
        if entries or not block_ms:
            return entries
        if self._waiters is None:
            return self._wait_all(count, block_ms)
        return self._waiters.wait(count, block_ms)

    def _round(self, count: int) -> list[Entry]:
        """The entries of the first partition that has some, starting one further each time
        (each partition's own pending and idle entries first, as its queue reads them)."""
        n = len(self.parts)
        first = self._next
        self._next = (first + 1) % n
        for k in range(n):
            entries = self.parts[(first + k) % n].read(count, None)
            if entries:
                return entries
        return []

    def _wait_all(self, count: int, block_ms: int) -> list[Entry]:
        """One Redis: block on every partition at once, up to ``count`` new entries of each."""
        part0 = self.parts[0]
        try:
            reply = part0.client.xreadgroup(
                part0.group,
                part0.consumer,
                {part.stream: ">" for part in self.parts},
                count=count,
                block=block_ms,
            )
        except Exception:
            for part in self.parts:  # a lost reply may have delivered entries: read them again
                part._pending_from = b"0"
            raise
        out: list[Entry] = []
        for stream, items in reply or []:
            part = self._by_stream[stream.decode() if isinstance(stream, bytes) else stream]
            # an entry deleted after delivery comes back as (id, None): nothing left to serve
            out.extend(part._hold([Entry(eid, f, stream=part._tag) for eid, f in items if f]))
        return out

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

    def read_last(self) -> list[Entry]:
        return [] if self._waiters is None else self._waiters.settle()

    def close(self) -> None:
        if self._waiters is not None:
            self._waiters.close()
        self.parts[0].close()  # they share one client


class _Waiters:
    """Blocking reads of every partition of a stream on a Redis Cluster, each on a thread of
    its own, for a :class:`PartitionedQueue` whose partitions are all empty: the first entry
    on any partition ends the wait at once, with no polling. A read still blocked when the
    wait ends goes on until its own timeout, and what it then gets (held by this consumer, as
    any read entry) is :meth:`take`-n by the next read."""

    def __init__(self, parts: Sequence[RedisStreamQueue]) -> None:
        self.parts = list(parts)
        self._pool = ThreadPoolExecutor(len(self.parts), thread_name_prefix="zoo-partition")
        self._ready: deque[list[Entry]] = deque()
        self._blocked: set[int] = set()  # partitions with a blocking read under way
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def take(self) -> list[Entry]:
        """Entries one blocking read got (one partition's), or none."""
        with self._changed:
            return self._ready.popleft() if self._ready else []

    def wait(self, count: int, block_ms: int) -> list[Entry]:
        """Block on every partition not blocked on already, up to ``block_ms``: the entries
        of the first read that gets some, else none (or the error of a read that failed)."""
        deadline = time.monotonic() + block_ms / 1000.0
        with self._changed:
            while True:
                # a read that ended empty (its own timeout) is sent again at once: Redis ends
                # a blocking read at its hz tick, later than asked, so reads and waits drift
                for i in range(len(self.parts)):
                    if i not in self._blocked:
                        self._blocked.add(i)
                        self._pool.submit(self._read, i, count, block_ms)
                left = deadline - time.monotonic()
                if self._ready or self._error is not None or left <= 0:
                    break
                self._changed.wait(left)
            if self._ready:
                return self._ready.popleft()
            error, self._error = self._error, None
        if error is not None:
            raise error
        return []

    def _read(self, i: int, count: int, block_ms: int) -> None:
        part = self.parts[i]
        entries: list[Entry] = []
        error: BaseException | None = None
        try:
            entries = part._hold(part._xread(">", count, block_ms))
        except BaseException as exc:  # noqa: BLE001 - raised by the waiting read
            error = exc
        with self._changed:
            self._blocked.discard(i)
            if entries:
                self._ready.append(entries)
            elif error is not None:
                self._error = error
            self._changed.notify_all()

    def settle(self, timeout_s: float = 10.0) -> list[Entry]:
        """Once the blocking reads under way are over (each ends within its ``block_ms``):
        every entry they got that no wait returned."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._blocked and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            out = [e for entries in self._ready for e in entries]
            self._ready.clear()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
