"""A worker's heartbeat: every :data:`~zoo_serving.broker.presence.HEARTBEAT_S` it publishes
the worker's counters and readiness through :class:`~zoo_serving.broker.presence.Presence`
(what ``zoo-serve status``, ``zoo-serve bench`` and /metrics read), then checks for a stop
request written after the worker started."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import keys
from ..backends import Model
from ..broker.presence import HEARTBEAT_S, Presence
from ..config import Config
from ..observe.stats import WorkerStats
from .postprocess import answers_with_top_n

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")


class Heartbeat:
    """One worker's presence, kept up by :meth:`loop` in a thread of its own.

    Args:
        presence: the stream's presence keys, on the worker's Redis client.
        config: the serving config (its runner goes into the heartbeat).
        name: the worker's consumer name.
        stats: the worker's live counters, read at each beat.
        started: when the worker started (wall clock); older stop requests are ignored.
        stuck: seconds the worker has been stuck in a batch past ``params.batch_timeout_s``
            (0 when it is not).
        server_id: the server whose runner started the worker ("" without one): its
            /metrics and TensorBoard summary count the workers that name it.
    """

    def __init__(
        self,
        presence: Presence,
        config: Config,
        name: str,
        stats: WorkerStats,
        *,
        started: float,
        stuck: Callable[[], float] = lambda: 0.0,
        server_id: str = "",
    ) -> None:
        self.presence = presence
        self.config = config
        self.name = name
        self.stats = stats
        self.started = started
        self.stuck = stuck
        self.server_id = server_id

    def announce(self, model: Model) -> None:
        """Say what the model takes and gives, and that a worker is ready."""
        try:
            self.presence.announce(
                self.name, model_info(model, self.config.params.top_n), self.body(True)
            )
        except Exception as exc:  # the heartbeat says it again within a second
            log.warning("announcing worker %s failed: %s", self.name, exc)

    def loop(self, stop: threading.Event, ready: Callable[[], bool]) -> None:
        """Beat until ``stop`` is set; set it when a stop request arrives.

        A failing beat is logged at WARNING when it starts failing (and again when the error
        changes kind), and once when it beats again; not every second in between."""
        failing = ""  # the kind of error the beats fail with now, "" while they succeed
        while not stop.is_set():
            try:
                self.beat(ready())
                if self.presence.stop_requested(self.started):
                    control = keys.control(self.presence.stream)
                    log.info("worker %s: stop requested through %s", self.name, control)
                    stop.set()
            except Exception as exc:
                kind = type(exc).__name__
                if kind != failing:
                    log.warning(
                        "worker %s: heartbeat on %s failed: %s: %s; status, readiness and "
                        "metrics do not see this worker until it beats again (every %gs)",
                        self.name,
                        keys.workers(self.presence.stream),
                        kind,
                        exc,
                        HEARTBEAT_S,
                    )
                else:
                    log.debug("worker %s: heartbeat failed again: %s", self.name, exc)
                failing = kind
            else:
                if failing:
                    log.info("worker %s: heartbeat recovered", self.name)
                    failing = ""
            stop.wait(HEARTBEAT_S)

    def beat(self, ready: bool) -> None:
        """Publish the heartbeat; renew readiness while ``ready``, give it up while not."""
        self.presence.beat(self.name, self.body(ready), ready)

    def body(self, ready: bool) -> dict[str, Any]:
        """The heartbeat's JSON fields, in the order they are published."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "runner": self.config.params.runner,
            "server": self.server_id,
            "ready": ready,
            "stuck_s": round(self.stuck(), 1),  # in a batch past params.batch_timeout_s
            **self.stats.published(),  # counts, stage sums, histograms
            "started": self.started,
            "ts": time.time(),
            "latency": self.stats.latency(),  # records' XADD to result, per LATENCY_BUCKETS_MS
        }

    def clear(self) -> None:
        """Take this worker's heartbeat out, and readiness if it was the one holding it."""
        try:
            self.presence.leave(self.name)
        except Exception as exc:
            log.debug("could not clear heartbeat: %s", exc)


def model_info(model: Model, top_n: int = 0) -> dict[str, Any]:
    """Backend, inputs and outputs (name, numpy dtype, shape with -1 for a free dim), and
    ``top_n``: how many classes each record is answered with (``params.top_n``), or 0 when
    records are answered with the output tensors."""

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
        "top_n": top_n if answers_with_top_n(model.outputs, top_n) else 0,
    }
