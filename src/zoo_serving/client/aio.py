"""The asyncio client: :class:`AsyncInputQueue` and :class:`AsyncOutputQueue` on
``redis.asyncio``, for services that run on an event loop (FastAPI, aiohttp)::

    from zoo_serving.aio import AsyncInputQueue

    async with AsyncInputQueue(url="redis://localhost:6379") as q:
        top5 = await q.predict(np.ones((3, 224, 224), np.float32))
        many = await asyncio.gather(*(q.predict(x) for x in xs))   # all in flight at once

Any number of ``predict`` calls may be in flight on one queue: a sender task adds the records
of every call queued meanwhile in one round trip (the same exactly-once add script as
:class:`~zoo_serving.InputQueue`), and one listener task takes the results of all of them
from the queue's inbox (protocol 3) with one blocking read, resolving each call's future
(with ``data.partitions`` > 1, records are spread over the partitions as by uri, and there is
an inbox, and a listener, in each partition's slot). A queue belongs to the event loop that
first used it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .. import keys
from ..broker.producer import Added, Outgoing, StreamProducer
from ..errors import QueueFullError, ZooServingError
from ..wire import native
from .adding import (
    Tokens,
    check_added,
    check_replicated,
    chunks,
    full_message,
    new_arena,
    private_records,
    results_of,
)
from .aio_base import AsyncRedisUser
from .common import named, result_or_raise
from .replies import POLL_S, TAKE, AsyncWaiting, new_inbox_id, split_entry

log = logging.getLogger(__name__)

_Submitted = tuple[list[Outgoing], "asyncio.Future[None]"]  # records, resolved once they are in


class AsyncInputQueue(AsyncRedisUser):
    """Sends records and awaits their results; the arguments are
    :class:`~zoo_serving.InputQueue`'s.

    Example::

        async with AsyncInputQueue(config="config.yaml") as q:
            await q.enqueue("img-1", image="cat.jpg")          # result by uri (OutputQueue)
            answer = await q.predict({"input": array})         # enqueue and await, privately
    """

    def __init__(
        self,
        *args: Any,
        wait_if_full_s: float = 0.0,
        shared_memory: int | bool = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wait_if_full_s = wait_if_full_s
        self.arena = new_arena(self, shared_memory)
        self._producers: dict[str, StreamProducer] = {}
        self.inbox_id = new_inbox_id()
        self._waiting: dict[bytes, tuple[AsyncWaiting, int]] = {}
        self._tokens = Tokens()
        self._outgoing: list[_Submitted] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def close(self) -> None:
        """Stop the sender and listener tasks, close the connection pool."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for waiting, _ in self._waiting.values():
            waiting.expire()
        self._waiting.clear()
        if self.arena is not None:
            self.arena.close()
        await super().close()

    # ---------------------------------------------------------------- by uri

    async def enqueue(self, uri: str, deadline_s: float | None = None, **inputs: Any) -> str:
        """Send one record whose result is fetched by ``uri``; see
        :meth:`zoo_serving.InputQueue.enqueue` (same errors)."""
        await self.enqueue_many([(uri, inputs)], deadline_s)
        return uri

    async def enqueue_many(
        self, records: Iterable[tuple[str, Mapping[str, Any]]], deadline_s: float | None = None
    ) -> list[str]:
        """Send ``(uri, {name: value})`` records; as
        :meth:`zoo_serving.InputQueue.enqueue_many`."""
        deadline_ms = None if deadline_s is None else int((time.time() + deadline_s) * 1000)
        out = [
            Outgoing(
                native.encode_request(
                    uri,
                    named(x),
                    deadline_ms,
                    views=True,
                    version=native.VERSION_2,
                    model_version=self.version,
                ),
                uri,
            )
            for uri, x in records
        ]
        await self._submit(out)
        return [r.uri for r in out]

    # ---------------------------------------------------------------- predict

    async def predict(self, inputs: Any, timeout: float = 30.0) -> Any:
        """Send one record and await its result; ``timeout`` bounds the total wait. A list
        of inputs sends a batch and returns a list of results.

        Raises:
            ResultTimeoutError: no result within ``timeout`` seconds.
            ZooServingError: the server's error for a failed record (code and message).
        """
        if isinstance(inputs, list):
            return await self.predict_many(inputs, timeout)
        return (await self.predict_many([inputs], timeout))[0]

    async def predict_many(
        self, batch: list[Any], timeout: float = 30.0, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Send several records and await all of them; as
        :meth:`zoo_serving.InputQueue.predict_many`."""
        started = time.monotonic()
        self._start()
        slots: list[Any] = []
        place = None if self.arena is None else self.arena.placer(slots)
        tokens, records = private_records(
            batch, timeout, self.inbox_id, self._tokens, place, self.version
        )
        waiting = AsyncWaiting(tokens, asyncio.get_running_loop().create_future())
        for i, token in enumerate(tokens):
            self._waiting[token] = (waiting, i)
        timer = None
        try:
            await self._submit(records)
            left = timeout - (time.monotonic() - started)
            timer = asyncio.get_running_loop().call_later(max(left, 0.0), waiting.expire)
            await waiting.done
        finally:
            if timer is not None:
                timer.cancel()
            for token in tokens:
                self._waiting.pop(token, None)
            for slot in slots:  # answered, or nobody waits for it anymore
                self.arena.free(slot)
        results = results_of(waiting.blobs, tokens, timeout)
        if return_exceptions:
            return results
        return [result_or_raise(r) for r in results]

    # ---------------------------------------------------------------- tasks

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._wake = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError(
                "this AsyncInputQueue belongs to another event loop; make one per loop"
            )
        if not self._tasks:
            self._tasks = [
                loop.create_task(self._send_loop(), name="zoo-aio-send"),
                loop.create_task(self._listen(), name="zoo-aio-inbox"),
            ]

    async def _submit(self, records: list[Outgoing]) -> None:
        """Hand records to the sender task; returns once they are in the stream."""
        self._start()
        assert self._wake is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outgoing.append((records, done))
        self._wake.set()
        await done

    async def _send_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                batch, self._outgoing = self._outgoing, []
                await self._send_batch(batch)

    async def _send_batch(self, batch: list[_Submitted]) -> None:
        """Private records of many calls go together; records by uri each call alone, so a
        uri in use fails only its own call."""
        group: list[_Submitted] = []
        for item in batch:
            if item[0] and item[0][0].public:
                await self._send_group(group)
                await self._send_group([item])
                group = []
            else:
                group.append(item)
        await self._send_group(group)

    async def _send_group(self, batch: list[_Submitted]) -> None:
        if not batch:
            return
        accepted: list[str] = []
        error: BaseException | None = None
        try:
            for chunk in chunks(r for records, _ in batch for r in records):
                await self._send(chunk, accepted)
        except Exception as exc:
            error = exc
            if isinstance(exc, ZooServingError):
                accepted = list(exc.details.get("accepted") or accepted)
        went = set(accepted)
        for records, done in batch:
            if done.done():
                continue
            if error is not None and not all(r.uri in went for r in records):
                done.set_exception(error)
            else:
                done.set_result(None)

    def _producer(self, stream: str) -> StreamProducer:
        producer = self._producers.get(stream)
        if producer is None:
            producer = self._producers[stream] = StreamProducer(
                self.db,
                stream,
                self.data.replica_acks,
                self.data.replica_timeout_ms,
                shared=True,
            )
        return producer

    async def _send(self, records: list[Outgoing], accepted: list[str]) -> None:
        """Add records, partition by partition (in order within each): a record by uri to
        the partition its uri picks, a ``predict`` record likewise by its private uri, its
        result coming to this client's inbox in that partition's slot."""
        by_part: dict[str, list[Outgoing]] = {}
        for record in records:
            by_part.setdefault(await self._part(record.uri), []).append(record)
        for part, group in by_part.items():
            await self._send_part(self._producer(part), group, accepted)

    async def _send_part(
        self, producer: StreamProducer, records: list[Outgoing], accepted: list[str]
    ) -> None:
        import redis

        producer.number(records)
        deadline = time.monotonic() + self.wait_if_full_s
        pause = 0.005
        while records:
            try:
                # a resend after a failover adds nothing twice: the add is idempotent
                added = await self._retrying(functools.partial(producer.add_async, records))
            except redis.exceptions.OutOfMemoryError as exc:
                added = Added(0, f"OOM {exc}", -1, 0)
            check_replicated(added, records, accepted, producer.stream, self.data)
            accepted.extend(r.uri for r in records[: added.count])
            records = records[added.count :]
            if not records:
                return
            check_added(added, records, accepted, self.stream)
            if time.monotonic() + pause > deadline:
                raise QueueFullError(full_message(added, self.stream), accepted=list(accepted))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _listen(self) -> None:
        """Take results from the inbox of every partition (a key in each one's slot) and
        resolve the futures waiting for them."""
        while self.partitions is None:  # the partition count, read once
            try:
                await self._part(b"")
            except Exception as exc:  # Redis away: callers time out, or it comes back
                log.warning("inbox %s: reading the partition count failed: %s", self.inbox_id, exc)
                await asyncio.sleep(0.5)
        parts = keys.partition_streams(self.stream, self.partitions)
        await asyncio.gather(*(self._listen_to(keys.inbox(p, self.inbox_id)) for p in parts))

    async def _listen_to(self, inbox: bytes) -> None:
        backoff = 0.05
        while True:
            try:
                reply = await self.db.blmpop(POLL_S, 1, inbox, direction="LEFT", count=TAKE)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: callers time out, or it comes back
                log.warning("inbox %s: read failed: %s; retrying", self.inbox_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            for blob in reply[1] if reply else ():
                token, result = split_entry(blob)
                found = self._waiting.pop(token, None)
                if found is not None:
                    found[0].fill(found[1], result)
