"""The sending side: :class:`InputQueue` adds records (each exactly once, under the server's
bound, a uri used by one record at a time) and waits for ``predict`` results at private keys."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .. import keys
from ..broker.producer import FULL, TAKEN, Added, Outgoing, StreamProducer
from ..errors import QueueError, QueueFullError, ResultTimeoutError, UriInUseError
from ..wire import native
from .common import RedisUser, named, result_or_raise

_CHUNK = 64  # most records per round trip in enqueue_many
_CHUNK_BYTES = 4 << 20  # and most payload bytes: the add script copies its arguments, and
# Redis counts them against maxmemory while it holds them


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
    """

    def __init__(self, *args: Any, wait_if_full_s: float = 0.0, **kwargs: Any) -> None:
        kwargs.setdefault("zero_copy", True)  # tensors go from the arrays to the socket
        super().__init__(*args, **kwargs)
        self.wait_if_full_s = wait_if_full_s
        self._producers = {
            part: StreamProducer(self.db, part, self.replica_acks, self.replica_timeout_ms)
            for part in keys.partition_streams(self.stream, self.partitions)
        }

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

    def _send_all(self, records: Iterable[Outgoing]) -> list[str]:
        """Send records in chunks of at most _CHUNK records and _CHUNK_BYTES, a chunk per
        partition (so N partitions cost no more round trips than one); returns the uris."""
        uris: list[str] = []
        chunks: dict[str, tuple[list[Outgoing], int]] = {}
        for record in records:
            part = self._part(record.uri)
            chunk, size = chunks.get(part, ([], 0))
            record_size = sum(len(v) for v in record.fields.values())
            if chunk and size + record_size > _CHUNK_BYTES:
                self._send_part(self._producers[part], chunk, uris)
                chunk, size = [], 0
            chunk.append(record)
            size += record_size
            if len(chunk) == _CHUNK:
                self._send_part(self._producers[part], chunk, uris)
                chunk, size = [], 0
            chunks[part] = (chunk, size)
        for part, (chunk, _size) in chunks.items():
            if chunk:
                self._send_part(self._producers[part], chunk, uris)
        return uris

    def _send(self, records: list[Outgoing], accepted: list[str]) -> None:
        """Add records, partition by partition (in order within each), as far as the server's
        bound and Redis's memory let them; wait for room up to ``wait_if_full_s``, then raise
        QueueFullError naming what went in."""
        by_part: dict[str, list[Outgoing]] = {}
        for record in records:
            by_part.setdefault(self._part(record.uri), []).append(record)
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
            if added.count and added.acked < self.replica_acks:
                raise QueueError(
                    f"records on stream {producer.stream} reached {added.acked} replica(s) "
                    f"within data.replica_timeout_ms={self.replica_timeout_ms}, "
                    f"data.replica_acks is {self.replica_acks}: they are on the master, and a "
                    "failover now may lose them; retry them under new uris, or check the "
                    "replicas",
                    accepted=list(accepted),
                    unconfirmed=[r.uri for r in records[: added.count]],
                )
            accepted.extend(r.uri for r in records[: added.count])
            records = records[added.count :]
            if not records:
                return
            if added.why == TAKEN:
                raise UriInUseError(
                    f"uri {records[0].uri!r} is in use on stream {producer.stream}: a record sent "
                    "with it is still queued, or its result waits to be fetched "
                    "(OutputQueue.query or dequeue takes it; it expires after "
                    "data.result_ttl_s); use another uri, or fetch that result first",
                    accepted=list(accepted),
                    uri=records[0].uri,
                )
            if added.why != FULL and not added.out_of_memory:
                raise QueueError(
                    f"Redis refused record {records[0].uri!r} on stream {producer.stream}: "
                    f"{added.why}",
                    accepted=list(accepted),
                )
            if time.monotonic() + pause > deadline:
                raise QueueFullError(self._full_message(added), accepted=list(accepted))
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _full_message(self, added: Added) -> str:
        if added.out_of_memory:
            return (
                f"Redis is out of memory (maxmemory reached: {added.why}); stream "
                f"{self.stream} takes no more records until workers answer queued ones and "
                "their results are fetched; retry later, pass wait_if_full_s to wait, or give "
                "Redis more memory"
            )
        return (
            f"stream {self.stream} holds {added.length} unprocessed records and the server's "
            f"bound (data.max_queue_len) is {added.bound}; retry later, pass wait_if_full_s "
            "to wait, or raise the bound"
        )

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

        The result goes to a key only this call knows (protocol 2, ``reply_to``): no other
        client, and no :meth:`OutputQueue.dequeue`, can take it.

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
        tokens = [uuid.uuid4().hex for _ in batch]
        self._send_private(tokens, batch, timeout)
        replies = [keys.reply(self._part(f"predict-{t}"), t) for t in tokens]
        if len(replies) == 1:  # one BLPOP, no first look
            one = self._pop(replies[0], timeout)
            results = {} if one is None else {replies[0]: one}
        else:
            results = self._pop_many(replies, timeout)
        missing = len(replies) - len(results)
        if missing:
            what = (
                f"no result for predict-{tokens[0]} within {timeout}s; is a server running?"
                if len(replies) == 1
                else f"{missing} of {len(replies)} results missing after {timeout}s"
            )
            raise ResultTimeoutError(what, missing=missing)
        if return_exceptions:
            return [results[k] for k in replies]
        return [result_or_raise(results[k]) for k in replies]

    def _send_private(self, tokens: list[str], batch: list[Any], deadline_s: float) -> None:
        deadline_ms = int((time.time() + deadline_s) * 1000)
        self._send_all(
            Outgoing(
                native.encode_request(
                    f"predict-{token}",
                    named(x),
                    deadline_ms,
                    views=True,
                    reply_to=token.encode(),
                    model_version=self.version,
                ),
                f"predict-{token}",
                public=False,
            )
            for token, x in zip(tokens, batch)
        )
