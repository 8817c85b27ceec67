"""A worker's write stage: write results and acknowledge their records, in one step per batch
(:meth:`~zoo_serving.broker.queue.Queue.complete`).

While Redis is away the results are kept and the write retried with backoff; once the worker
is stopping, for a few seconds more. When Redis refuses for good (a permission the user lacks,
a key of the wrong type), each record is tried alone, then with an error result, so one
unwritable result does not hold up the others; a record that cannot be answered at all stays
pending (logged at error) and is retried after ``params.claim_idle_ms``.
"""

from __future__ import annotations

import logging
import queue as _queue
import threading
import time
from functools import partial
from typing import Any

from .. import wire
from ..broker.queue import Completion, Entry, Queue, added_at
from ..config import Config
from ..errors import ServerError
from ..observe.stats import WorkerStats
from .batch import BatchCore
from .reader import STOP, Item
from .retry import is_permanent, until_done

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")

MAX_WRITE = 512  # records written in one step at most


class Writer:
    """The write stage of one worker.

    Args:
        config: the serving config.
        queue: the worker's queue.
        core: the batch core (answers a record whose result Redis refuses with an error).
        stats: the worker's counters (records answered, write times).
    """

    def __init__(self, config: Config, queue: Queue, core: BatchCore, stats: WorkerStats) -> None:
        self.config = config
        self.queue = queue
        self.core = core
        self.stats = stats

    def loop(
        self, to_write: _queue.Queue[Any], halt: threading.Event, written: threading.Event
    ) -> None:
        """Write what arrives until the end marker; then set ``written``."""
        try:
            finished = False
            while not finished:
                got = to_write.get()
                if got is STOP:
                    return
                pending = list(got)
                while len(pending) < MAX_WRITE:
                    try:
                        got = to_write.get_nowait()
                    except _queue.Empty:
                        break
                    if got is STOP:
                        finished = True
                        break
                    pending.extend(got)
                started = time.perf_counter()
                self.write(pending, halt)
                self._observe(pending, time.perf_counter() - started)
        finally:
            written.set()

    def write(self, items: list[Item], halt: threading.Event) -> None:
        """Write the results of ``items`` and acknowledge them (see the module docstring)."""
        queue = self.queue
        done = [self._completion(i) for i in items]
        err = until_done(lambda: queue.complete(done), f"writing {len(done)} results", halt)
        if err is None:
            return
        if not is_permanent(err):  # stopping, and Redis does not answer
            queue.release([i.entry for i in items])
            return
        if len(items) == 1:
            self._answer_unwritable(items[0], halt)
            return
        for item in items:
            one = partial(queue.complete, [self._completion(item)])
            if until_done(one, "writing a result", halt) is not None:
                self._answer_unwritable(item, halt)

    def _answer_unwritable(self, item: Item, halt: threading.Event) -> None:
        """A record whose result Redis refuses: answer it with an error, else leave it
        pending, or, once it is in the dead-letter stream, acknowledge it without one."""
        queue = self.queue
        uri = item.uri.decode("utf-8", "replace")
        if not item.dead_lettered:
            failed = Item(uri=item.uri, entry=item.entry, reply=item.reply)
            self.core.fail(failed, ServerError("the result could not be written to Redis"))
            one = [self._completion(failed)]
            if until_done(lambda: queue.complete(one), "writing an error result", halt) is None:
                return
            queue.release([item.entry])
            log.error(
                "record uri=%s: no result could be written; it stays pending and is retried "
                "after params.claim_idle_ms=%d",
                uri,
                self.config.params.claim_idle_ms,
            )
            return
        err = until_done(lambda: queue.drop([item.entry]), "acknowledging a record", halt)
        if err is None:
            log.error(
                "record uri=%s: acknowledged without a result, which Redis refuses; it is in "
                "the dead-letter stream",
                uri,
            )
        else:
            queue.release([item.entry])

    def _completion(self, item: Item) -> Completion:
        return completion(item.entry, item.reply, self.config.data.stream, item.uri, item.result)

    def _observe(self, items: list[Item], write_s: float) -> None:
        written = time.perf_counter()
        # records failed before batching were never timed
        records_s = sum(written - i.answered_at for i in items if i.answered_at)
        self.stats.add_written(len(items), records_s, write_s)
        self.stats.add_latencies([time.time() - added_at(i.entry.id) for i in items])


def completion(
    entry: Entry, reply: str, stream: str, uri: bytes, result: bytes | None
) -> Completion:
    """How the ``result`` of stream ``entry`` (protocol ``reply``) is written: to the key its
    protocol and fields name (a sender's inbox prefixed with its token), in the partition the
    entry was read from."""
    place = wire.result_place(reply, stream, uri, entry.fields, entry.stream)
    value = place.prefix + result if place.prefix and result else result
    return Completion(entry, uri, value or b"", place.key, place.how, place.claim)
