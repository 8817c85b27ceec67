"""The sending side: :class:`InputQueue` adds records (each exactly once, under the server's
bound, a uri used by one record at a time) and waits for ``predict`` results in its inbox
(protocol 3), read by one listener for every thread."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .. import keys
from ..broker.producer import Added, Outgoing, StreamProducer
from ..errors import QueueFullError
from ..wire import native
from .adding import (
    check_added,
    check_replicated,
    chunks,
    full_message,
    new_arena,
    private_records,
    results_of,
)
from .common import RedisUser, named, result_or_raise
from .replies import Inbox
from .sender import CombiningSender


class InputQueue(RedisUser):
    """Sends records to a serving stream.

    Args:
        host, port: Redis address (default localhost:6379).
        name: the input stream (default ``data.stream`` of ``config``, else ``serving_stream``).
        url: a ``redis://`` or ``rediss://`` URL instead of host and port.
        config: a ``config.yaml`` path, mapping or Config: its ``data`` section is used.
        password: Redis password.
        model: a model of the server's repository: records go to its stream (found in the
            model index the server publishes on ``name``); default: the default model.
        version: the version of ``model`` every record asks for; default: the newest served.
        wait_if_full_s: when the stream is at the server's bound, wait up to this long for
            room before raising :class:`QueueFullError` (default: raise at once).
        shared_memory: for clients on the server's host: ``predict`` places tensors of
            64 KiB or more in a shared memory region of this many bytes (True: 64 MiB) and
            sends references (protocol 3); the workers read them in place. When the region is
            full, tensors go through Redis as usual. Freed by :meth:`close`, or by the
            workers when this process goes away.
    """

    def __init__(
        self,
        *args: Any,
        wait_if_full_s: float = 0.0,
        shared_memory: int | bool = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("zero_copy", True)  # tensors go from the arrays to the socket
        super().__init__(*args, **kwargs)
        self.wait_if_full_s = wait_if_full_s
        self.arena = new_arena(self, shared_memory)
        parts = keys.partition_streams(self.stream, self.partitions)
        acks = (self.replica_acks, self.replica_timeout_ms)
        self._producers = {part: StreamProducer(self.db, part, *acks) for part in parts}
        # predict: one producer per partition and one inbox for every thread, records combined
        # into few round trips (sender.py), results read by one listener (replies.py)
        shared = {part: StreamProducer(self.db, part, *acks, shared=True) for part in parts}
        self._sender = CombiningSender(lambda records: self._send_all(records, shared))
        # an inbox in each partition's slot; each predict call takes the next partition
        self._inboxes = {part: Inbox(self.db, part) for part in parts}
        self.inbox = self._inboxes[self.stream]
        self._turn = itertools.count()

    def close(self) -> None:
        """Stop the inboxes' listeners, free the shared memory, close the connection pool."""
        for inbox in self._inboxes.values():
            inbox.close()
        if self.arena is not None:
            self.arena.close()
        super().close()

    def enqueue(self, uri: str, deadline_s: float | None = None, **inputs: Any) -> str:
        """Send one record: ``enqueue("img-1", image="cat.jpg")`` or ``enqueue("x", t=array)``.

        A record goes in once, even when the connection drops and redis-py sends it again.

        Args:
            uri: the record's id; its result is fetched by it (``OutputQueue.query``, or
                ``dequeue``, from any client). One record at a time per uri.
            deadline_s: seconds from now after which the server should not bother.
            **inputs: one keyword per model input: an ndarray (tensor), bytes or a path (image).

        Raises:
            QueueFullError: the stream holds as many unprocessed records as the server allows
                (``data.max_queue_len``), or Redis is out of memory (``maxmemory``), still
                after waiting ``wait_if_full_s``.
            UriInUseError: an earlier record with this uri is still queued, or its result
                was not fetched yet; the two would share one result.
        """
        self._send([Outgoing(self._fields(uri, inputs, deadline_s), uri)], [])
        return uri

    def enqueue_many(
        self, records: Iterable[tuple[str, Mapping[str, Any]]], deadline_s: float | None = None
    ) -> list[str]:
        """Send ``(uri, {name: value})`` records, many per round trip; returns the uris.

        Raises:
            QueueFullError, UriInUseError: as :meth:`enqueue`; ``details["accepted"]`` lists
                the uris that went in, in order, before the one that could not.
        """
        return self._send_all(
            Outgoing(self._fields(uri, inputs, deadline_s), uri) for uri, inputs in records
        )

    def _send_all(
        self, records: Iterable[Outgoing], producers: dict[str, StreamProducer] | None = None
    ) -> list[str]:
        """Send records in chunks of at most _CHUNK records and _CHUNK_BYTES, chunked per
        partition (so N partitions cost no more round trips than one); returns the uris."""
        producers = producers or self._producers
        uris: list[str] = []
        if len(producers) == 1:
            (producer,) = producers.values()
            for chunk in chunks(records):
                self._send_part(producer, chunk, uris)
            return uris
        by_part: dict[str, list[Outgoing]] = {}
        for record in records:
            by_part.setdefault(record.part or self._part(record.uri), []).append(record)
        for part, group in by_part.items():
            for chunk in chunks(group):
                self._send_part(producers[part], chunk, uris)
        return uris

    def _send(self, records: list[Outgoing], accepted: list[str]) -> None:
        """Add records, partition by partition (in order within each), as far as the server's
        bound and Redis's memory let them; wait for room up to ``wait_if_full_s``, then raise
        QueueFullError naming what went in."""
        by_part: dict[str, list[Outgoing]] = {}
        for record in records:
            by_part.setdefault(record.part or self._part(record.uri), []).append(record)
        for part, group in by_part.items():
            self._send_part(self._producers[part], group, accepted)

    def _send_part(
        self, producer: StreamProducer, records: list[Outgoing], accepted: list[str]
    ) -> None:
        import redis

        producer.number(records)  # now: nothing else may send between numbers and send
        deadline = time.monotonic() + self.wait_if_full_s
        pause = 0.005
        while records:
            try:
                # a resend after a failover adds nothing twice: the add is idempotent
                added = self._retrying(lambda batch=records: producer.add(batch))
            except redis.exceptions.OutOfMemoryError as exc:  # before the script ran
                added = Added(0, f"OOM {exc}", -1, 0)
            check_replicated(added, records, accepted, producer.stream, self.data)
            accepted.extend(r.uri for r in records[: added.count])
            records = records[added.count :]
            if not records:
                return
            check_added(added, records, accepted, producer.stream)
            if time.monotonic() + pause > deadline:
                raise QueueFullError(full_message(added, producer.stream), accepted=list(accepted))
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _fields(self, uri: str, inputs: Mapping[str, Any], deadline_s: float | None) -> Any:
        deadline_ms = None if deadline_s is None else int((time.time() + deadline_s) * 1000)
        return native.encode_request(
            uri,
            named(inputs),
            deadline_ms,
            views=True,
            version=native.VERSION_2,
            model_version=self.version,
        )

    def predict(self, inputs: Any, timeout: float = 30.0) -> Any:
        """Send one record and wait for its result; ``timeout`` bounds the total wait.

        The result goes to this client's inbox under a token only this call knows
        (protocol 3): no other client, and no :meth:`OutputQueue.dequeue`, can take it. Any
        number of threads may call ``predict`` on one InputQueue: their records share round
        trips, and one listener reads every result.

        Args:
            inputs: an ndarray, image bytes or path, or a dict of them by input name;
                a list of those sends a batch and returns a list of results.

        Raises:
            ResultTimeoutError: no result within ``timeout`` seconds.
            ZooServingError: the server's error for a failed record (code and message).
        """
        if isinstance(inputs, list):
            return self.predict_many(inputs, timeout)
        return self.predict_many([inputs], timeout)[0]

    def predict_many(
        self, batch: list[Any], timeout: float = 30.0, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Send several records and wait for all of them; ``timeout`` bounds the total wait.

        With ``return_exceptions``, a failed record's error object takes its place in the list
        instead of being raised.

        Raises:
            ResultTimeoutError: results missing after ``timeout`` seconds
                (``details["missing"]``: how many).
        """
        started = time.monotonic()
        slots: list[Any] = []
        place = None if self.arena is None else self.arena.placer(slots)
        # the call's records go to one partition, beside the inbox their results come to
        part = self.stream
        if self.partitions > 1:
            part = keys.partition_streams(self.stream, self.partitions)[
                next(self._turn) % self.partitions
            ]
        inbox = self._inboxes[part]
        try:
            tokens, records = private_records(
                batch, timeout, inbox.current_id(), inbox.tokens, place, self.version
            )
            for record in records:
                record.part = part
            waiting = inbox.expect(tokens)
            try:
                self._sender.submit(records)
            except BaseException:
                inbox.forget(waiting)
                raise
            blobs = inbox.wait(waiting, timeout - (time.monotonic() - started))
        finally:
            for slot in slots:  # answered, or nobody waits for it anymore
                assert self.arena is not None
                self.arena.free(slot)
        results = results_of(blobs, tokens, timeout)
        if return_exceptions:
            return results
        return [result_or_raise(r) for r in results]
