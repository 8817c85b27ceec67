"""The front door's side of Redis, on the event loop: readiness, the model's description,
records in and results out, through one :class:`~zoo_serving.aio.AsyncInputQueue` (one
sender task, one inbox listener) for every request in flight.

One :class:`DoorQueue` serves one stream; the routes find it by model name
(:meth:`Doors.get`), so models served on streams of their own can each have one.
"""

from __future__ import annotations

import time
from typing import Any

from ..client.aio import AsyncInputQueue
from ..config import Config
from ..errors import (
    BrokerConnectionError,
    DeadlineExceededError,
    InputError,
    PayloadTooLargeError,
    QueueFullError,
    ResultTimeoutError,
    ZooServingError,
)
from .bodies import HttpError

READY_CACHE_S = 0.5  # a positive readiness answer is reused this long
MODEL_CACHE_S = 2.0  # the published model description is reused this long


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error a record or the queue gave."""
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, (QueueFullError, BrokerConnectionError)):
        return 503
    if isinstance(exc, (ResultTimeoutError, DeadlineExceededError)):
        return 504
    return 500


class DoorQueue:
    """Records of HTTP requests into one stream, and their results back.

    Args:
        config: the serving config (``data``: where Redis and the stream are;
            ``http.timeout_s``).
        stream: the stream, when not ``data.stream``.
    """

    def __init__(self, config: Config, stream: str | None = None) -> None:
        self.config = config
        self.stream = stream or config.data.stream
        self.timeout_s = config.http.timeout_s
        self.inq = AsyncInputQueue(config=config, name=self.stream)
        self.presence = self.inq.presence
        self._ready_until = 0.0
        self._model: tuple[float, dict[str, Any] | None] = (0.0, None)

    async def close(self) -> None:
        await self.inq.close()

    async def ready(self) -> bool:
        now = time.monotonic()
        if now < self._ready_until:
            return True
        ok = await self.presence.is_ready_async()
        if ok:
            self._ready_until = now + READY_CACHE_S
        return ok

    async def model(self) -> dict[str, Any] | None:
        """What the workers published about the model (backend, inputs, outputs), if any."""
        now = time.monotonic()
        stamp, info = self._model
        if info is None or now - stamp > MODEL_CACHE_S:
            info = await self.presence.model_async()
            self._model = (now, info)
        return info

    async def require_ready(self) -> dict[str, Any]:
        if not await self.ready():
            raise HttpError(
                503,
                f"model not ready: no worker of stream {self.stream} has its model loaded; "
                "retry when /v2/health/ready answers 200",
                "not_ready",
            )
        return await self.model() or {"inputs": [], "outputs": []}

    async def run(self, records: list[Any]) -> list[Any]:
        """Send records, await every result (``http.timeout_s`` in total); a failed record
        raises an :class:`HttpError` naming it. Results come back to this door's inbox
        under tokens only this call knows, so no ``OutputQueue.dequeue`` can take them."""
        try:
            results = await self.inq.predict_many(records, self.timeout_s, return_exceptions=True)
        except ResultTimeoutError as exc:
            raise HttpError(
                504,
                f"{exc.details.get('missing', len(records))} of {len(records)} results missing "
                f"after http.timeout_s={self.timeout_s}s; the workers may be overloaded",
                ResultTimeoutError.code,
            ) from None
        for i, result in enumerate(results):
            if isinstance(result, ZooServingError):
                where = f"record {i}: " if len(records) > 1 else ""
                raise HttpError(http_status(result), where + result.message, result.code)
        return results


class Doors:
    """The door of each model the front door serves, by name: today one model on
    ``data.stream``; a server of several models maps each name to its stream's door."""

    def __init__(self, config: Config, name: str) -> None:
        self.name = name
        self.default = DoorQueue(config)
        self._by_name = {name: self.default}

    def get(self, name: str) -> DoorQueue | None:
        return self._by_name.get(name)

    async def check(self) -> None:
        """Raises BrokerConnectionError when Redis does not answer."""
        for door in self._by_name.values():
            await door.inq.check()

    async def close(self) -> None:
        for door in self._by_name.values():
            await door.close()
