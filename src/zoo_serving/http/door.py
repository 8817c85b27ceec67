"""A model's queue, as the front door sees it: its readiness and description, and records in
and results out (through :class:`~zoo_serving.InputQueue`, so each record goes in once and its
result comes back privately)."""

from __future__ import annotations

import time
from typing import Any

from ..broker.presence import Presence
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
from . import bodies
from .bodies import HttpError

READY_CACHE_S = 0.5  # a positive readiness answer is reused this long
MODEL_CACHE_S = 2.0  # the published model description is reused this long


def status_of(exc: BaseException) -> int:
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
    """The front door's side of Redis: readiness, the model's description, records in and
    results out."""

    def __init__(
        self, config: Config, model: str | None = None, version: int | None = None
    ) -> None:
        from ..client import InputQueue

        self.config = config
        self.timeout_s = config.http.timeout_s
        self.inq = InputQueue(config=config, model=model, version=version)
        self.stream = self.inq.stream
        self.presence = Presence(self.inq.db, self.stream)
        self._ready_until = 0.0
        self._model: tuple[float, dict[str, Any] | None] = (0.0, None)

    def close(self) -> None:
        self.inq.close()

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._ready_until:
            return True
        ok = self.presence.is_ready()
        if ok:
            self._ready_until = now + READY_CACHE_S
        return ok

    def model(self) -> dict[str, Any] | None:
        """What the workers published about the model (backend, inputs, outputs), if any."""
        now = time.monotonic()
        stamp, info = self._model
        if info is None or now - stamp > MODEL_CACHE_S:
            info = self.presence.model()
            self._model = (now, info)
        return info

    def require_ready(self) -> dict[str, Any]:
        if not self.ready():
            raise HttpError(
                503,
                f"model not ready: no worker of stream {self.stream} has its model loaded; "
                "retry when /v2/health/ready answers 200",
                "not_ready",
            )
        return self.model() or {"inputs": [], "outputs": []}

    def run(self, records: list[bodies.Record]) -> list[Any]:
        """Send records, wait for every result (``http.timeout_s`` in total); a failed record
        raises an :class:`HttpError` naming it. Results come back to keys only this call
        knows, so no ``OutputQueue.dequeue`` elsewhere can take them."""
        try:
            results = self.inq.predict_many(records, self.timeout_s, return_exceptions=True)
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
                raise HttpError(status_of(result), where + result.message, result.code)
        return results
