"""A worker's watchdog: it keeps the records in the worker's pipeline its own, and notices a
batch that runs past ``params.batch_timeout_s``.

A Python thread inside a framework call cannot be stopped, so the watchdog does not try: it
marks the batch timed out and hands it to the worker (:attr:`Watchdog.on_timeout`), which
answers or releases its records, and says the worker is *stuck* until the call returns. While
stuck, the worker's held entries are no longer refreshed, so other workers take them over
after ``params.claim_idle_ms``.

Example::

    dog = Watchdog(queue, claim_idle_ms=30_000, batch_timeout_s=60, on_timeout=give_up)
    threading.Thread(target=dog.loop, args=(done,), daemon=True).start()
    running = dog.begin(batch)
    core.serve(batch)
    if dog.end(running):       # it ran past the limit: its results are not used
        ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..broker.queue import Queue

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")

MAX_TICK_S = 0.25  # the watchdog looks at least this often


@dataclass(eq=False)
class Running:
    """A batch in the model: its records and when it started (``time.monotonic()``)."""

    items: Sequence[Any]
    started: float
    timed_out: bool = False
    finished: bool = False


class Watchdog:
    """Refreshes a consumer's held entries and times the running batch.

    Args:
        queue: the worker's queue (:meth:`~zoo_serving.broker.queue.Queue.refresh`).
        claim_idle_ms: ``params.claim_idle_ms``; held entries are refreshed four times as often.
        batch_timeout_s: ``params.batch_timeout_s``; 0: batches are not timed.
        on_timeout: called (in the watchdog's thread) with a batch the moment it runs past the
            limit.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        claim_idle_ms: int,
        batch_timeout_s: float,
        on_timeout: Callable[[Running], None],
    ) -> None:
        self.queue = queue
        self.batch_timeout_s = batch_timeout_s
        self.on_timeout = on_timeout
        self.refresh_s = max(claim_idle_ms / 4000.0, 0.01)
        ticks = [self.refresh_s, MAX_TICK_S]
        if batch_timeout_s > 0:
            ticks.append(batch_timeout_s / 4)
        self.tick_s = max(min(ticks), 0.005)
        self._lock = threading.Lock()
        self._running: Running | None = None
        self._stuck_on: Running | None = None

    @property
    def stuck(self) -> bool:
        """True from a batch's timeout until the model returns from it."""
        return self._stuck_on is not None

    def stuck_for_s(self) -> float:
        """Seconds the batch the worker is stuck on has run (0 when not stuck)."""
        running = self._stuck_on
        return time.monotonic() - running.started if running is not None else 0.0

    def begin(self, items: Sequence[Any]) -> Running:
        """A batch goes into the model now."""
        running = Running(items, time.monotonic())
        with self._lock:
            self._running = running
        return running

    def end(self, running: Running) -> bool:
        """The model returned from ``running``; True when it had timed out (the worker gave it
        up, so its results must not be used)."""
        with self._lock:
            running.finished = True
            self._running = None
            if self._stuck_on is running:
                self._stuck_on = None
            return running.timed_out

    def check(self) -> None:
        """Time out the running batch if it has run past the limit."""
        if self.batch_timeout_s <= 0:
            return
        with self._lock:
            running = self._running
            if running is None or running.timed_out or running.finished:
                return
            if time.monotonic() - running.started <= self.batch_timeout_s:
                return
            running.timed_out = True
        # stuck only once the batch is handed over: a worker leaving on ``stuck`` must find
        # the answer of a record alone already queued for its writer
        self.on_timeout(running)
        with self._lock:
            if not running.finished:
                self._stuck_on = running

    def refresh(self) -> None:
        """Reset the idle time of the held entries (see :meth:`Queue.refresh`)."""
        try:
            lost = self.queue.refresh()
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("refreshing the records in flight failed: %s", exc)
            return
        if lost:
            log.info("%d records in flight were taken over by other workers", len(lost))

    def loop(self, done: threading.Event) -> None:
        """Watch until ``done`` is set."""
        next_refresh = 0.0
        while not done.wait(self.tick_s):
            try:
                self.check()
            except Exception:  # the watchdog must outlive a bug in a timeout handler
                log.exception("handling a batch timeout failed")
            if not self.stuck and time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.refresh_s
                self.refresh()
