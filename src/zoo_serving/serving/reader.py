"""A worker's read stage: read entries from the queue, decode them, and hand them on: decoded
records to the model a batch at a time, failed ones straight to the writer.

A record delivered more often than ``params.max_deliveries`` is copied to the dead-letter
stream and answered with an error here, before it can reach the model again.
"""

from __future__ import annotations

import logging
import queue as _queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import keys, wire
from ..broker.queue import Entry, Queue
from ..config import Config
from ..errors import ServerError, ZooServingError
from ..shm.attach import Regions
from .batch import BatchCore, Record, check_deadline
from .preprocess import Preprocessor
from .retry import is_permanent, until_done

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")

STOP = object()  # end-of-work marker passed down the stages


@dataclass(eq=False, kw_only=True)
class Item(Record):
    """One record in flight through the stages: the batch core's record, with the stream
    entry it came from and its timings."""

    entry: Entry
    dead_lettered: bool = False  # copied to the dead-letter stream, answered with an error
    decode_s: float = 0.0  # seconds the reader spent decoding it
    answered_at: float = 0.0  # perf_counter() when its result was ready to write

    @property
    def redelivered(self) -> bool:
        """Delivered before (its worker died or gave up on it): it runs in a batch of its own."""
        return self.entry.deliveries > 1


Resolve = Callable[[int | None], tuple[int, Preprocessor]]


class Reader:
    """The read stage of one worker.

    Args:
        config: the serving config.
        queue: the worker's queue.
        resolve: the version a record runs on (its own, or the newest served) and the decoder
            of that version's inputs; raises a ZooServingError for a version not served.
        core: the batch core (answers failed records with their error).
        paused: True while the worker must not take more records (it is stuck on a batch).
    """

    def __init__(
        self,
        config: Config,
        queue: Queue,
        resolve: Resolve,
        core: BatchCore,
        paused: Callable[[], bool],
    ) -> None:
        self.config = config
        self.queue = queue
        self.resolve = resolve
        self.core = core
        self.paused = paused
        self.drained = True  # the last read emptied the stream
        # shared memory inputs of clients on this host (protocol 3), mapped as they come
        self.regions = Regions(getattr(queue, "client", None), config.data.stream)
        self.abandoned = threading.Event()  # set when nothing downstream takes records anymore

    def loop(self, halt: threading.Event, to_batch: Any, to_write: _queue.Queue[Any]) -> None:
        """Read until ``halt`` is set, then pass the end marker on."""
        count = self.config.params.batch_size * 2
        backoff = 0.1
        try:
            while not halt.is_set():
                self.regions.maybe_sweep()
                if self.paused():
                    halt.wait(0.05)
                    continue
                try:
                    entries = self.queue.read(count, block_ms=100)
                    if backoff > 0.1:  # the first good read after failed ones
                        log.info("read from %s recovered", self.config.data.stream)
                    backoff = 0.1
                    # a short read means Redis has nothing more right now: no point waiting
                    self.drained = len(entries) < count
                except Exception as exc:  # broker trouble: back off and try again
                    log.log(
                        logging.ERROR if is_permanent(exc) else logging.WARNING,
                        "read from %s failed: %s; retrying in %.1fs",
                        self.config.data.stream,
                        exc,
                        backoff,
                    )
                    halt.wait(backoff)
                    backoff = min(backoff * 2, 1.0)
                    if "NOGROUP" in str(exc):  # a Redis that came back empty
                        _try(self.queue.setup)
                    continue
                self._decode_all(entries, halt, to_batch, to_write)
            # what a blocking read still under way at the stop took is served too
            self._decode_all(self.queue.read_last(), threading.Event(), to_batch, to_write)
        finally:
            self._put(to_batch, STOP)
            self.regions.close()

    def _put(self, to: Any, what: Any) -> None:
        """Hand on, unless the stage after is gone (the worker left a stuck model call)."""
        while not self.abandoned.is_set():
            try:
                to.put(what, timeout=0.1)
                return
            except _queue.Full:
                continue

    def _decode_all(
        self,
        entries: list[Entry],
        halt: threading.Event,
        to_batch: Any,
        to_write: _queue.Queue[Any],
    ) -> None:
        """Decode a read, handing records to the model a batch at a time (the first batch
        need not wait for the rest of the read) and failed ones to the writer."""
        size = self.config.params.batch_size
        decoded: list[Item] = []
        failed: list[Item] = []
        for entry in entries:
            started = time.perf_counter()
            item = self._decode(entry, halt)
            if item is None:
                continue
            item.decode_s = time.perf_counter() - started
            if item.result is not None:
                failed.append(item)
                continue
            decoded.append(item)
            if len(decoded) == size:
                self._put(to_batch, decoded)
                decoded = []
        if decoded:
            self._put(to_batch, decoded)
        if failed:
            self._put(to_write, failed)

    def _decode(self, entry: Entry, halt: threading.Event) -> Item | None:
        uri = entry.fields.get(wire.native.F_URI)
        if uri is None:  # the error result goes where an operator can find it: under the id
            uri = entry.id
        item = Item(uri=uri, entry=entry, reply=wire.reply_kind(entry.fields))
        limit = self.config.params.max_deliveries
        if entry.deliveries > limit:
            return self._give_up(item, limit, halt)
        try:
            request = wire.decode_record(
                entry.fields, item.reply, self.config.data.max_payload_bytes
            )
            item.deadline_ms = request.deadline_ms
            check_deadline(item)
            if any(raw.kind == "shm" for raw in request.inputs):
                request.inputs = self.regions.resolve(request.inputs)
            item.version, preprocess = self.resolve(request.version)
            item.arrays = preprocess(request, by_position=item.reply != wire.NATIVE)
        except ZooServingError as exc:
            self.core.fail(item, exc)
        except Exception as exc:  # a decoder bug must not take the worker down
            log.exception("unexpected error decoding %r", uri)
            self.core.fail(item, exc)
        return item

    def _give_up(self, item: Item, limit: int, halt: threading.Event) -> Item | None:
        """A record delivered too often (it may kill workers): dead-letter it, answer an error.
        None when it stays pending (the worker is stopping and Redis does not answer)."""
        dead = keys.dead_letter(item.entry.stream or self.config.data.stream)
        message = (
            f"record delivered {item.entry.deliveries} times, more than params.max_deliveries="
            f"{limit} (its workers died or stalled); moved to the dead-letter stream {dead}"
        )
        queue = self.queue
        # the copy must exist before the record is acknowledged
        err = until_done(
            lambda: queue.dead_letter(item.entry, message), "dead-lettering a record", halt
        )
        if err is not None and not is_permanent(err):
            self.queue.release([item.entry])  # the next worker dead-letters it
            return None
        if err is not None:  # Redis will not take the copy: answer anyway, or it comes back
            message = f"{message.split('; moved')[0]}; its copy to {dead} failed: {err}"
        item.dead_lettered = err is None
        self.core.fail(item, ServerError(message))
        return item


def _try(step: Any) -> None:
    try:
        step()
    except Exception as exc:
        log.warning("%s failed: %s", getattr(step, "__name__", step), exc)
