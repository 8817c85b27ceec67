"""A worker's presence in Redis: its heartbeat, readiness, the model it serves, and stop
requests through the stream's control key.

Every :data:`HEARTBEAT_S` a worker writes a JSON heartbeat into ``keys.workers(stream)`` (its
host, pid, runner, counters and per-stage time sums: what ``zoo-serve status``, ``zoo-serve
bench`` and /metrics read) and, while ready, renews ``keys.ready(stream)`` for
:data:`HEARTBEAT_TTL_S`; it then reads ``keys.control(stream)`` for a stop written after it
started.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import keys
from .config import Config

if TYPE_CHECKING:
    from .backends import Model
    from .worker import WorkerStats

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 5.0


class Heartbeat:
    """One worker's keys in Redis.

    Args:
        redis: the worker's redis-py client.
        config: the serving config (its stream and runner).
        name: the worker's consumer name, its field in ``keys.workers``.
        stats: the worker's live counters, read at each beat.
        started: when the worker started (wall clock); older stop requests are ignored.
    """

    def __init__(
        self, redis: Any, config: Config, name: str, stats: WorkerStats, *, started: float
    ) -> None:
        self.redis = redis
        self.config = config
        self.name = name
        self.stats = stats
        self.started = started
        self.stream = config.data.stream

    def announce(self, model: Model) -> None:
        """Say what the model takes and gives (``keys.model``, for HTTP front doors and
        ``zoo-serve bench``) and that a worker is ready."""
        info = json.dumps(model_info(model))
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(keys.model(self.stream), info)
            pipe.set(keys.ready(self.stream), self.name, px=int(HEARTBEAT_TTL_S * 1000))
            pipe.execute()
        except Exception as exc:  # the heartbeat says it again within a second
            log.warning("announcing worker %s failed: %s", self.name, exc)

    def loop(self, stop: threading.Event, ready: Callable[[], bool]) -> None:
        """Beat until ``stop`` is set; set it when a stop request arrives."""
        control = keys.control(self.stream)
        while not stop.is_set():
            try:
                self.beat(ready())
                request = self.redis.get(control)
                if request and stop_requested(request, self.started):
                    log.info("worker %s: stop requested through %s", self.name, control)
                    stop.set()
            except Exception as exc:
                log.debug("heartbeat failed: %s", exc)
            stop.wait(HEARTBEAT_S)

    def beat(self, ready: bool) -> None:
        stats = self.stats
        beat = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "runner": self.config.params.runner,
            "ready": ready,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "served_1m": stats.recent.count(),  # answered in the last minute
            "failures": dict(stats.failures_by_code),  # by error code
            "batches": stats.batches,
            "stages": stats.stages(),
            "started": self.started,
            "ts": time.time(),
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.workers(self.stream), self.name, json.dumps(beat))
        if ready:
            pipe.set(keys.ready(self.stream), self.name, px=int(HEARTBEAT_TTL_S * 1000))
        pipe.execute()

    def clear(self) -> None:
        """Take this worker's heartbeat out, and readiness if it was the one holding it."""
        try:
            self.redis.hdel(keys.workers(self.stream), self.name)
            if self.redis.get(keys.ready(self.stream)) == self.name.encode():
                self.redis.delete(keys.ready(self.stream))  # others re-assert it within a beat
        except Exception as exc:
            log.debug("could not clear heartbeat: %s", exc)


def read_heartbeats(
    redis: Any, stream: str, *, max_age_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """The heartbeats on ``stream``, by worker name; with ``max_age_s`` only those written that
    recently (a worker that stopped beating is gone). Malformed ones are left out."""
    now = time.time()
    out = {}
    for name, body in redis.hgetall(keys.workers(stream)).items():
        try:
            beat = json.loads(body)
            age_s = now - float(beat.get("ts", 0))
        except (ValueError, TypeError, AttributeError):
            continue
        if max_age_s is None or age_s <= max_age_s:
            out[name.decode("utf-8", "replace")] = beat
    return out


def stop_requested(request: bytes, started: float) -> bool:
    """A stop written to the control key after a worker ``started``."""
    try:
        body = json.loads(request)
        return body.get("cmd") == "stop" and float(body.get("ts", 0)) >= started
    except (ValueError, AttributeError):
        return False


def model_info(model: Model) -> dict[str, Any]:
    """Backend, inputs and outputs (name, numpy dtype, shape with -1 for a free dim)."""

    def specs(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "dtype": s.dtype.str,
                "shape": [-1 if d is None else d for d in s.shape],
            }
            for s in items
        ]

    return {
        "backend": model.backend,
        "inputs": specs(model.inputs),
        "outputs": specs(model.outputs),
    }
