"""A worker's batching stage: decoded records from the reader become batches for the model.

Alone, a worker batches in a thread of its own (:class:`OwnBatches`): a batch takes what has
been read, up to ``params.batch_size``, waiting at most ``params.max_wait_ms`` for more, and
not at all when the last read found the stream empty. With other models in the same process,
it feeds the shared execution slots instead (:class:`SharedBatches`, see :mod:`.scheduler`),
which batch by the same rules. Either way a record delivered before (its worker died or gave
up on its batch) runs in a batch of its own.
"""

from __future__ import annotations

import queue as _queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from .reader import STOP, Item, Reader
from .scheduler import Lane, Scheduler

Serve = Callable[[list[Item], "_queue.Queue[Any]"], None]


class OwnBatches:
    """Batches run in this stage's own thread.

    Args:
        config: the worker's config.
        reader: the read stage (whether its last read emptied the stream).
        serve: runs a batch and hands it to the writer.
        left: True once the worker left a stuck model call behind.
    """

    def __init__(
        self, config: Config, reader: Reader, serve: Serve, left: Callable[[], bool]
    ) -> None:
        self.config = config
        self.reader = reader
        self.serve = serve
        self.left = left

    def loop(self, to_batch: _queue.Queue[Any], to_write: _queue.Queue[Any]) -> None:
        try:
            carry: list[Item] = []  # records read and not yet batched
            done = False
            while not done or carry:
                if not carry:
                    got = to_batch.get()
                    if got is STOP:
                        return
                    carry = got
                if not carry[0].redelivered:
                    done = self._fill(carry, to_batch)
                batch, carry = _take(carry, self.config.params.batch_size)
                self.serve(batch, to_write)
                if self.left():  # back from a call run() left behind: nobody waits
                    return
        finally:
            if not self.left():
                to_write.put(STOP)

    def _fill(self, carry: list[Item], to_batch: _queue.Queue[Any]) -> bool:
        """Add what arrives within ``params.max_wait_ms`` to ``carry``, up to a batch; True
        when the end marker arrived."""
        size = self.config.params.batch_size
        deadline = time.monotonic() + self.config.params.max_wait_ms / 1000.0
        while len(carry) < size:
            try:
                got = to_batch.get_nowait()
            except _queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.reader.drained:
                    return False
                try:
                    got = to_batch.get(timeout=remaining)
                except _queue.Empty:
                    return False
            if got is STOP:
                return True
            carry.extend(got)
        return False


class SharedBatches:
    """Decoded records handed to shared execution slots, in a lane named after the model.

    The reader hands its records straight to the lane (this object is its ``to_batch``: no
    thread in between, so a record changes threads twice on its way, reader to slot to
    writer, not three times: with many models in one process every hand-over may wait for
    the GIL); this stage's thread only ends the lane once the reader stopped.

    Args:
        executor: the slots' scheduler.
        name: the model's name (its lane).
        config: the worker's config (batch size, max wait).
        weight: the model's share of the slots.
        reader: the read stage.
        left: True once the worker left a stuck model call behind.
    """

    def __init__(
        self,
        executor: Scheduler,
        name: str,
        config: Config,
        weight: float,
        reader: Reader,
        left: Callable[[], bool],
    ) -> None:
        self.executor = executor
        self.name = name
        self.reader = reader
        self.left = left
        params = config.params
        self.lane = Lane(name, params.batch_size, params.max_wait_ms / 1000.0, weight)
        self._ended = threading.Event()  # the reader stopped
        self.executor.add(self.lane)

    def put(self, item: Any, timeout: float | None = None) -> None:
        """The reader's hand-over: a list of decoded records into the lane, or the end."""
        if item is STOP:
            self._ended.set()
        else:
            self.executor.offer(self.name, item, drained=self.reader.drained)

    def loop(self, to_batch: Any, to_write: _queue.Queue[Any]) -> None:
        """Once the reader stops, wait until the slots ran all of the lane, then end the
        writer."""
        try:
            self._ended.wait()
            self.executor.mark_drained(self.name, True)
            while not self.executor.wait_idle(self.name, 0.1):
                if self.left():
                    return
        finally:
            self.executor.remove(self.name)
            if not self.left():
                to_write.put(STOP)


def _take(carry: list[Item], size: int) -> tuple[list[Item], list[Item]]:
    """The next batch out of ``carry`` and what is left: a redelivered record alone, else up
    to ``size`` first deliveries."""
    if carry[0].redelivered:
        return carry[:1], carry[1:]
    batch: list[Item] = []
    rest: list[Item] = []
    for item in carry:
        if len(batch) < size and not item.redelivered:
            batch.append(item)
        else:
            rest.append(item)
    return batch, rest
