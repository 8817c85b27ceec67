"""The Queue the worker talks to: read entries, complete them with their results.

The worker knows only :class:`Queue`; :class:`~zoo_serving.broker.streams.RedisStreamQueue` is
its Redis Streams implementation. Another broker (Kafka, say) would be a second implementation;
nothing else changes. A :class:`Completion` says where and how a result is written, resolved
by the caller (:func:`zoo_serving.wire.result_place`), so the queue never looks at a record's
protocol.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .. import keys


@dataclass
class Entry:
    """One stream entry as read: its id, its raw fields, and how often it was delivered
    (known for entries delivered before: taken over from another consumer, or read again from
    this consumer's pending list; else 1), and the partition stream it was read from (None:
    the stream itself, ``data.partitions: 1``)."""

    id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1
    stream: str | None = None


@dataclass(frozen=True)
class Completion:
    """One record answered: the entry to acknowledge, its uri, the encoded result, and where
    the result goes: ``key``, written as a one-element list (:data:`keys.AS_LIST`, the uri also
    added to the stream's finished list, and ``claim``, the uri's claim key, dropped if this
    entry holds it; :data:`keys.AS_PRIVATE`, not added), appended to a client's inbox
    (:data:`keys.AS_INBOX`, the value already prefixed with its token) or as a hash's
    ``value`` field (:data:`keys.AS_HASH`)."""

    entry: Entry
    uri: bytes
    value: bytes
    key: bytes
    how: str = keys.AS_LIST
    claim: bytes | None = None


class Queue(ABC):
    """What the worker needs from a broker."""

    def check_access(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~zoo_serving.errors.BrokerPermissionError` when the broker will not
        let this consumer do what a worker needs (checked once, at start)."""

    @abstractmethod
    def setup(self, max_queue_len: int | None = None) -> None:
        """Create the stream and consumer group if they do not exist; publish the bound on
        unprocessed records when given (0: none)."""

    @abstractmethod
    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` entries for this consumer, waiting at most ``block_ms`` for one."""

    @abstractmethod
    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Keep a copy of an entry given up on, with the reason, where an operator can see it."""

    def drop(self, entries: Sequence[Entry]) -> None:
        """Acknowledge ``entries`` without a result: only for records already copied to the
        dead-letter stream whose error result the broker refuses to take."""
        raise NotImplementedError

    @abstractmethod
    def complete(self, done: Sequence[Completion]) -> int:
        """Write each completion's result and acknowledge its entry, as one step per entry;
        returns how many results were written (an entry already completed elsewhere is
        skipped)."""

    def refresh(self) -> list[bytes]:
        """Keep the entries this consumer holds (read and not yet completed or released) from
        looking idle, so no other consumer takes them over while they are in this worker's
        pipeline; returns the ids it no longer holds (taken over or completed elsewhere). A
        worker calls it well within the idle time after which entries are taken over."""
        return []

    def release(self, entries: Sequence[Entry]) -> None:  # noqa: B027 - optional hook
        """Stop holding ``entries`` without completing them (a worker gave up on them): they
        stay pending and are taken over, as redeliveries, once idle long enough."""

    def holds(self, entry: Entry) -> bool:
        """Whether this consumer still holds ``entry`` (not released, not lost to another)."""
        return True

    def read_last(self) -> list[Entry]:
        """After the last :meth:`read`: entries already delivered to this consumer that no
        read has returned yet (a blocking read still under way when a wait ended), once
        such reads are over. The caller serves them as read."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def added_at(entry_id: bytes) -> float:
    """When Redis added an entry (wall-clock seconds), read from its stream id.

    The id holds whole milliseconds, cut down from the true time: the middle of that
    millisecond is the unbiased guess (the plain value would add 0.5 ms to every wait).
    """
    try:
        return (int(entry_id.split(b"-", 1)[0]) + 0.5) / 1000.0
    except ValueError:
        return time.time()


def consumer_name(tag: str = "") -> str:
    """A consumer name unique to this process (and ``tag``): host-pid[-tag]."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    return f"{name}-{tag}" if tag else name
