"""Retrying a worker's Redis steps while Redis is away, and giving up where retrying cannot
help: an error Redis will answer the same way next time (a permission the user lacks, a key
of the wrong type, a script it cannot load), or a stop while Redis stays away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")

STOP_GRACE_S = 5.0  # how long a step is still retried once the worker is stopping


def is_permanent(exc: BaseException) -> bool:
    """Whether sending the same command again cannot succeed: an error reply (NOPERM,
    WRONGTYPE, NOSCRIPT after the reload failed, ...), refused credentials, or a bug on our
    side; not a lost connection, a timeout, or a Redis loading, failing over, out of memory or
    asking to try again, which pass."""
    import redis.exceptions as rex

    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return True
    passing = (
        rex.ConnectionError,  # BusyLoadingError too
        rex.TimeoutError,
        rex.ReadOnlyError,
        rex.OutOfMemoryError,
        rex.TryAgainError,
        rex.ClusterDownError,  # MasterDownError too
        rex.InvalidResponse,
        OSError,
    )
    return not isinstance(exc, passing)


def until_done(
    step: Callable[[], Any],
    what: str,
    stop: threading.Event | None = None,
    *,
    grace_s: float = STOP_GRACE_S,
) -> BaseException | None:
    """Run ``step`` until it succeeds, backing off (0.1 s doubling to 1 s) while Redis is away.

    Returns None when it succeeded, else the error it gave up on: at once for a permanent one
    (:func:`is_permanent`), or the last one once ``stop`` has been set for ``grace_s``.
    """
    backoff = 0.1
    stopping_since: float | None = None
    while True:
        try:
            step()
            return None
        except Exception as exc:
            if is_permanent(exc):
                log.error("%s failed: %s: %s; not retrying", what, type(exc).__name__, exc)
                return exc
            if stop is not None and stop.is_set():
                now = time.monotonic()
                stopping_since = now if stopping_since is None else stopping_since
                if now - stopping_since >= grace_s:
                    log.error("%s failed: %s; giving up, the worker is stopping", what, exc)
                    return exc
            log.warning("%s failed: %s; retrying in %.1fs", what, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
