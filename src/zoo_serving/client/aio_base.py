"""What both asyncio classes share (:class:`AsyncRedisUser`: the connection, readiness, the
partition of a record by uri) and :class:`AsyncOutputQueue`; the input side is
:mod:`.aio`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import keys
from ..broker.connection import check_async, close_async, connect, connect_async
from ..broker.partitions import partition_count
from ..broker.presence import Presence
from ..config.checks import CLUSTER_SCHEMES, SENTINEL_SCHEMES
from ..wire.native import ResultValue, decode_result
from .common import FAILOVER_S, data_config, model_stream, result_or_raise

T = TypeVar("T")


class AsyncRedisUser:
    """The connection and readiness both async classes share; arguments as
    :class:`~zoo_serving.InputQueue`'s."""

    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        name: str | None = None,
        *,
        url: str | None = None,
        config: Any = None,
        password: str | None = None,
        model: str | None = None,
        version: int | None = None,
        **redis_options: Any,
    ) -> None:
        import dataclasses

        data = data_config(config)
        if password is not None:
            data = dataclasses.replace(data, password=password)
        if url is None and (host is not None or port is not None):
            url = f"redis://{host or 'localhost'}:{port or 6379}"
        self.stream = name or data.stream
        self.data, self.url = data, url
        self.model, self.version = model, version
        src = url or data.src or ""
        self.cluster = src.startswith(CLUSTER_SCHEMES)
        # a client of several nodes rides out a failover, as InputQueue does
        self._follow_s = FAILOVER_S if src.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES) else 0.0
        self.partitions: int | None = None  # as the server published it, read on first use
        if model is not None:  # the model index, read once here (the one blocking call)
            lookup = connect(data, url=url)
            try:
                self.stream = model_stream(lookup, self.stream, model)
            finally:
                lookup.close()
        redis_options.setdefault("socket_timeout", None)  # blocking reads bound themselves
        redis_options.setdefault("socket_connect_timeout", 5.0)
        self.db, self.where = connect_async(data, url=url, **redis_options)
        self.presence = Presence(self.db, self.stream)

    async def check(self) -> None:
        """Ping Redis.

        Raises:
            BrokerConnectionError: Redis does not answer or refuses the login.
        """
        await check_async(self.db, self.where, self.data)

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        """``await step()``, tried again while a failover is under way (several nodes only),
        for up to :data:`~.common.FAILOVER_S`. Only for steps that may be sent twice: the
        idempotent add, reads."""
        import redis.exceptions as rex

        passing = (rex.ConnectionError, rex.TimeoutError, rex.ClusterDownError, rex.TryAgainError)
        give_up = time.monotonic() + self._follow_s
        pause = 0.05
        while True:
            try:
                return await step()
            except passing:
                if not self._follow_s or time.monotonic() + pause > give_up:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def _part(self, uri: str | bytes) -> str:
        """The partition stream of a record by ``uri`` (the stream itself when unsplit), as
        the synchronous clients pick it, so either kind finds the other's results."""
        if self.partitions is None:
            raw = await self._retrying(lambda: self.db.get(keys.partitions(self.stream)))
            self.partitions = partition_count(raw, self.data.partitions)
        return keys.partition_of(self.stream, uri, self.partitions)

    async def close(self) -> None:
        """Close the connection pool."""
        await close_async(self.db)

    async def __aenter__(self) -> Any:
        await self.check()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def is_ready(self) -> bool:
        """True while at least one worker has its model loaded and warmed up."""
        return await self.presence.is_ready_async()

    async def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait up to ``timeout`` seconds for a ready worker; True when there is one."""
        deadline = time.monotonic() + timeout
        while not await self.is_ready():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


class AsyncOutputQueue(AsyncRedisUser):
    """Fetches results of records enqueued by uri; as :class:`~zoo_serving.OutputQueue`."""

    async def query(self, uri: str, timeout: float | None = None) -> Any:
        """The result of ``uri``, or None if it is not there yet; with ``timeout``, await it
        up to that long. Raises the record's :class:`ZooServingError` when it failed."""
        key = keys.result(await self._part(uri), uri)
        if timeout is None:
            blob = await self._retrying(lambda: self.db.lpop(key))
        else:
            reply = await self._retrying(lambda: self.db.blpop([key], timeout=max(timeout, 0.001)))
            blob = reply[1] if reply else None
        return None if blob is None else result_or_raise(decode_result(blob))

    async def dequeue(self) -> dict[str, ResultValue]:
        """Every result not fetched yet, by uri (failed records map to their error object)."""
        out: dict[str, ResultValue] = {}
        await self._part(b"")
        for part in keys.partition_streams(self.stream, self.partitions or 1):
            finished = keys.finished(part)
            while True:
                uris = await self.db.lpop(finished, 1000)
                if not uris:
                    break
                pipe = self.db.pipeline(transaction=False)
                for uri in uris:
                    pipe.lpop(keys.result(part, uri))
                for uri, blob in zip(uris, await pipe.execute()):
                    if blob is not None:
                        out[uri.decode("utf-8", "replace")] = decode_result(blob)
        return out
