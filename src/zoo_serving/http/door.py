"""The front door's side of Redis, on the event loop: readiness, the model's description,
records in and results out, through one :class:`~zoo_serving.aio.AsyncInputQueue` (one
sender task, one inbox listener) for every request in flight.

One :class:`DoorQueue` serves one stream; the routes find it by model name
(:meth:`Doors.get`), so models served on streams of their own can each have one.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from .. import keys
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
INDEX_CACHE_S = 1.0  # the model index is reused this long


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
        stream: the stream, when not ``data.stream`` (a model of its own).
        version: the model version every record asks for (default: the newest served).
    """

    def __init__(
        self, config: Config, stream: str | None = None, version: int | None = None
    ) -> None:
        self.config = config
        self.stream = stream or config.data.stream
        self.timeout_s = config.http.timeout_s
        self.inq = AsyncInputQueue(config=config, name=self.stream, version=version)
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
    """The door of each model the front door serves, by name and version: the default
    model's on ``data.stream``, each other model's on its own stream, found in the model
    index the server publishes (read at most once a second).

    Args:
        config: the serving config.
        name: the default model's name where the server published no index yet.
    """

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.default = DoorQueue(config)
        self._doors: dict[tuple[str, int | None], DoorQueue] = {}
        self._index: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})

    async def index(self) -> dict[str, dict[str, Any]]:
        """The server's model index: name -> entry (stream, versions, default)."""
        stamp, index = self._index
        if time.monotonic() - stamp > INDEX_CACHE_S:
            raw = await self.default.inq.db.hgetall(keys.models(self.config.data.stream))
            index = {}
            for name, body in raw.items():
                with contextlib.suppress(ValueError):
                    index[name.decode("utf-8", "replace")] = json.loads(body)
            self._index = (time.monotonic(), index)
        return index

    async def get(self, name: str | None = None, version: str | None = None) -> DoorQueue:
        """The door of model ``name`` (default: the default model), version ``version``.

        Raises:
            HttpError: 404 for a model or version the server does not have.
        """
        index = await self.index()
        if name is None:
            name = next((n for n, e in index.items() if e.get("default")), self.name)
        entry = index.get(name)
        if entry is None and not (name == self.name and not index):
            have = ", ".join(sorted(index)) or self.name
            raise HttpError(404, f"no model {name!r}; this server serves {have}", "no_model")
        number = None
        if version is not None:
            versions = sorted(entry.get("versions", {})) if entry else ["1"]
            if version not in versions:
                raise HttpError(
                    404,
                    f"no version {version!r} of model {name!r}; it has version(s) "
                    f"{', '.join(versions)}",
                    "no_version",
                )
            number = int(version)
        if entry is None or (entry.get("default") and number is None):
            return self.default
        key = (name, number)
        if key not in self._doors:
            self._doors[key] = DoorQueue(self.config, str(entry["stream"]), number)
        return self._doors[key]

    async def versions(self, name: str) -> list[str]:
        """The version numbers of model ``name`` the repository has (``["1"]`` without one)."""
        entry = (await self.index()).get(name) or {}
        return sorted(entry.get("versions", {})) or ["1"]

    async def check(self) -> None:
        """Raises BrokerConnectionError when Redis does not answer."""
        await self.default.inq.check()

    async def close(self) -> None:
        for door in [self.default, *self._doors.values()]:
            await door.close()
        self._doors.clear()
