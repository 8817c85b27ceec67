"""Execution slots shared by every model of a worker: which model's records run next.

Each model has a :class:`Lane` of decoded records waiting. A lane is *ready* when it holds a
full batch, when its oldest record has waited ``max_wait_ms``, or when its reader found the
stream empty (nothing more is on its way, so waiting would only add latency). A free slot takes
a batch from the ready lane that has had the least execution time for its weight (stride
scheduling: each batch charges its lane ``seconds / weight``), so a saturated model cannot
starve a light one, and a weight-2 model gets twice the CPU of a weight-1 one when both have
work. A lane that was idle starts level with the busiest, so it cannot bank credit.

A batch never mixes versions: it takes the first waiting record's version and the records of
that version behind it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Lane:
    """One model's records waiting for a slot.

    Args:
        name: the model's name.
        batch_size: the largest batch it runs.
        max_wait_s: how long a record may wait for its batch to fill.
        weight: its share of the slots.
    """

    name: str
    batch_size: int
    max_wait_s: float
    weight: float = 1.0
    pending: deque[Any] = field(default_factory=deque)
    arrived: deque[float] = field(default_factory=deque)  # monotonic time of each pending
    drained: bool = True  # the reader's last read found no more
    served_s: float = 0.0  # execution seconds charged, divided by the weight
    running: int = 0  # batches of this lane in a slot now
    closed: bool = False

    def ready(self, now: float) -> bool:
        # one batch of a model at a time: its worker times one batch, as its own thread would
        if not self.pending or self.running:
            return False
        if len(self.pending) >= self.batch_size or self.drained:
            return True
        return now - self.arrived[0] >= self.max_wait_s

    def due(self) -> float | None:
        """When the oldest record's wait is over (monotonic), or None with nothing waiting."""
        return self.arrived[0] + self.max_wait_s if self.pending else None

    def take(self) -> list[Any]:
        """Up to a batch of records of one version, oldest first; a record delivered before
        (its worker died or gave up on it) runs alone."""
        first = self.pending[0]
        if getattr(first, "redelivered", False):
            self.arrived.popleft()
            return [self.pending.popleft()]
        version = getattr(first, "version", None)
        batch: list[Any] = []
        keep: list[tuple[Any, float]] = []
        while self.pending and len(batch) < self.batch_size:
            item, at = self.pending.popleft(), self.arrived.popleft()
            if getattr(item, "version", None) == version and not getattr(item, "redelivered", 0):
                batch.append(item)
            else:
                keep.append((item, at))
        for item, at in reversed(keep):
            self.pending.appendleft(item)
            self.arrived.appendleft(at)
        return batch


class Scheduler:
    """Hands batches to ``slots`` execution threads, fairly between lanes.

    Readers call :meth:`offer`; slot threads loop on :meth:`next_batch` and :meth:`done`.
    """

    def __init__(self) -> None:
        self._lanes: dict[str, Lane] = {}
        self._cond = threading.Condition()
        self._stopping = False

    # ------------------------------------------------------------------ lanes

    def add(self, lane: Lane) -> Lane:
        with self._cond:
            lane.served_s = self._level()
            self._lanes[lane.name] = lane
            return lane

    def remove(self, name: str) -> list[Any]:
        """Take a lane out; returns the records it still held (for the caller to answer)."""
        with self._cond:
            lane = self._lanes.pop(name, None)
            if lane is None:
                return []
            lane.closed = True
            left = list(lane.pending)
            lane.pending.clear()
            lane.arrived.clear()
            self._cond.notify_all()
            return left

    def lane(self, name: str) -> Lane | None:
        return self._lanes.get(name)

    def lanes(self) -> list[Lane]:
        with self._cond:
            return list(self._lanes.values())

    # ------------------------------------------------------------------ readers

    def offer(self, name: str, items: Iterable[Any], drained: bool) -> bool:
        """Records read and decoded for model ``name``; False when it has no lane (any more)."""
        with self._cond:
            lane = self._lanes.get(name)
            if lane is None:
                return False
            now = time.monotonic()
            if not lane.pending and not lane.running:
                lane.served_s = max(lane.served_s, self._level())  # no credit for idling
            for item in items:
                lane.pending.append(item)
                lane.arrived.append(now)
            lane.drained = drained
            self._cond.notify()
            return True

    def mark_drained(self, name: str, drained: bool) -> None:
        with self._cond:
            lane = self._lanes.get(name)
            if lane is not None and lane.drained != drained:
                lane.drained = drained
                if drained and lane.pending:
                    self._cond.notify()

    def wait_idle(self, name: str, timeout_s: float | None = None) -> bool:
        """Block until model ``name`` has nothing waiting or running; True when it has not."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                lane = self._lanes.get(name)
                if lane is None or (not lane.pending and not lane.running):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._cond.wait(0.05)

    def holds_version(self, name: str, version: int) -> bool:
        """Whether records of model ``name`` waiting for a slot run on ``version``."""
        with self._cond:
            lane = self._lanes.get(name)
            return lane is not None and any(
                getattr(item, "version", None) == version for item in lane.pending
            )

    def waiting(self, name: str) -> int:
        """Records of model ``name`` waiting for a slot."""
        lane = self._lanes.get(name)
        return len(lane.pending) if lane is not None else 0

    # ------------------------------------------------------------------ slots

    def next_batch(self, timeout_s: float | None = None) -> tuple[Lane, list[Any]] | None:
        """The next batch to run and its lane; None after :meth:`stop` once every lane is
        empty, or when ``timeout_s`` passed with nothing ready."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [lane for lane in self._lanes.values() if lane.ready(now)]
                if ready:
                    lane = min(ready, key=lambda c: c.served_s)
                    lane.running += 1
                    return lane, lane.take()
                if self._stopping and not any(c.pending for c in self._lanes.values()):
                    return None
                dues = [d for c in self._lanes.values() if (d := c.due()) is not None]
                wake = min(dues) if dues else None
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wake = deadline if wake is None else min(wake, deadline)
                self._cond.wait(None if wake is None else max(wake - now, 0.0))

    def done(self, lane: Lane, seconds: float) -> None:
        """A batch of ``lane`` ran for ``seconds``: charge it."""
        with self._cond:
            lane.running -= 1
            lane.served_s += seconds / lane.weight
            self._cond.notify_all()

    def stop(self) -> None:
        """Slots finish what is waiting, then :meth:`next_batch` answers None."""
        with self._cond:
            self._stopping = True
            for lane in self._lanes.values():
                lane.drained = True  # nothing more is coming: run what is there now
            self._cond.notify_all()

    def _level(self) -> float:
        """The least execution charged to a lane with work: where a newly busy lane starts."""
        busy = [c.served_s for c in self._lanes.values() if c.pending or c.running]
        return min(busy) if busy else max((c.served_s for c in self._lanes.values()), default=0.0)
