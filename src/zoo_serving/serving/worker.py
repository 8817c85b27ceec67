"""The serving loop every runner runs: read -> decode -> batch -> predict -> postprocess ->
write + ack.

Three stages overlap so the model never waits for Redis: a reader thread reads and decodes
records, the calling thread batches and runs the model, a writer thread writes results and
acknowledges records. Bounded hand-over queues give backpressure between them. A stop request
(the event, a signal handled by the runner, or the stream's control key) stops reading; what was
read is still served, written and acknowledged before :meth:`Worker.run` returns.

Batching is dynamic: a batch takes what has been read, up to ``params.batch_size``, waiting at
most ``params.max_wait_ms`` for more, and not at all when the last read found the stream empty
(nothing more is on its way through this reader, so waiting would only add latency).
"""

from __future__ import annotations

import logging
import queue as _queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import keys, wire
from ..backends import Model
from ..broker.connection import connect
from ..broker.presence import Presence
from ..broker.queue import Completion, Entry, Queue, added_at, consumer_name
from ..broker.streams import RedisStreamQueue
from ..config import load_config
from ..errors import ServerError, ZooServingError
from ..observe.metrics import Metrics
from ..observe.stats import WorkerStats
from .batch import BatchCore, Record, check_deadline, load_served_model, preprocessor
from .heartbeat import Heartbeat
from .preprocess import Preprocessor

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")

_STOP = object()  # end-of-work marker passed down the stages


@dataclass(eq=False, kw_only=True)
class Item(Record):
    """One record in flight through the stages: the batch core's record, with the stream
    entry it came from and its timings."""

    entry: Entry
    decode_s: float = 0.0  # seconds the reader spent decoding it
    answered_at: float = 0.0  # perf_counter() when its result was ready to write


class Worker:
    """One serving worker: one model, one consumer in the stream's consumer group.

    Args:
        config: the serving config (or anything :func:`load_config` takes).
        queue: the broker consumer; by default a :class:`RedisStreamQueue` on ``data.src``.
        model: an already loaded model; by default the one at ``model.path``.
        name: the consumer name; by default host-pid plus a counter.
        metrics: the server's metrics sink, called at each stage; by default one that
            records nothing.

    Example::

        worker = Worker("config.yaml")
        worker.load()
        worker.run(stop_event)      # returns after stop_event is set and in-flight work is done
    """

    _count = 0
    _count_lock = threading.Lock()

    def __init__(
        self,
        config: Any,
        *,
        queue: Queue | None = None,
        model: Model | None = None,
        name: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = load_config(config)
        with Worker._count_lock:
            Worker._count += 1
            number = Worker._count
        self.name = name or consumer_name(str(number))
        self.queue = queue
        self.model = model
        self.stats = WorkerStats()
        self.ready = False
        self._redis: Any = None
        self._heartbeat: Heartbeat | None = None
        self._preprocess: Preprocessor | None = None
        self._started = time.time()
        self._drained = True  # the last read emptied the stream
        self.metrics = metrics or Metrics()
        self._core: BatchCore | None = None

    # -------------------------------------------------------------- lifecycle

    def load(self) -> Worker:
        """Connect, create the consumer group, load and warm up the model."""
        cfg = self.config
        if self.queue is None:
            # the worker blocks 100 ms at most: a socket silent for 10 s is a dead one
            self._redis = connect(
                cfg.data, retries=0, socket_timeout=10.0, socket_connect_timeout=5.0
            )
            self.queue = RedisStreamQueue(
                self._redis,
                cfg.data.stream,
                cfg.data.group,
                consumer=self.name,
                result_ttl_s=cfg.data.result_ttl_s,
                claim_idle_ms=cfg.params.claim_idle_ms,
            )
        self.queue.setup(cfg.data.max_queue_len)
        if self.model is None:
            self.model = load_served_model(cfg)
        else:
            self.model.warmup(cfg.params.batch_size)
        self._core = BatchCore(self.model, cfg.params.top_n, self.stats)
        self._preprocess = preprocessor(self.model, cfg)
        if self._redis is not None:
            presence = Presence(self._redis, cfg.data.stream)
            self._heartbeat = Heartbeat(presence, cfg, self.name, self.stats, started=self._started)
            # before ``ready`` is set, so whoever sees it sees Redis agree
            self._heartbeat.announce(self.model)
        self.ready = True
        log.info("worker %s ready: %s model %s", self.name, self.model.backend, self.model.path)
        return self

    def close(self) -> None:
        """Free the model and the connection."""
        if self.model is not None:
            self.model.close()
        if self.queue is not None:
            self.queue.close()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then finish every record already read and return."""
        if not self.ready:
            self.load()
        # the hand-overs carry lists (a read's records, a batch's results): one queue
        # operation per list, not per record, which a 10,000 records/s worker feels
        to_batch: _queue.Queue[Any] = _queue.Queue(maxsize=4)  # up to a batch each
        to_write: _queue.Queue[Any] = _queue.Queue(maxsize=8)
        threads = [
            threading.Thread(
                target=self._read_loop,
                args=(stop, to_batch, to_write),
                name=f"{self.name}-read",
                daemon=True,
            ),
            threading.Thread(
                target=self._write_loop, args=(to_write,), name=f"{self.name}-write", daemon=True
            ),
        ]
        if self._heartbeat is not None:
            threads.append(
                threading.Thread(
                    target=self._heartbeat.loop,
                    args=(stop, lambda: self.ready),
                    name=f"{self.name}-heartbeat",
                    daemon=True,
                )
            )
        self.metrics.worker_started(self.name, self.stats)
        for t in threads:
            t.start()
        try:
            self._infer_loop(to_batch, to_write)
        finally:
            to_write.put(_STOP)
            for t in threads:
                t.join()
            if self._heartbeat is not None:
                self._heartbeat.clear()
            self.metrics.worker_stopped(self.name)
        log.info(
            "worker %s stopped: %d succeeded, %d failed",
            self.name,
            self.stats.succeeded,
            self.stats.failed,
        )

    # -------------------------------------------------------------- stages

    def _read_loop(
        self, stop: threading.Event, to_batch: _queue.Queue[Any], to_write: _queue.Queue[Any]
    ) -> None:
        assert self.queue is not None
        count = self.config.params.batch_size * 2
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    entries = self.queue.read(count, block_ms=100)
                    if backoff > 0.1:  # the first good read after failed ones
                        log.info("read from %s recovered", self.config.data.stream)
                    backoff = 0.1
                    # a short read means Redis has nothing more right now: no point waiting
                    self._drained = len(entries) < count
                except Exception as exc:  # broker trouble: back off and try again
                    log.warning(
                        "read from %s failed: %s; retrying in %.1fs",
                        self.config.data.stream,
                        exc,
                        backoff,
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 1.0)
                    if "NOGROUP" in str(exc):  # a Redis that came back empty
                        self._try(self.queue.setup)
                    continue
                self._decode_all(entries, to_batch, to_write)
        finally:
            to_batch.put(_STOP)

    def _decode_all(
        self, entries: list[Entry], to_batch: _queue.Queue[Any], to_write: _queue.Queue[Any]
    ) -> None:
        """Decode a read, handing records to the model a batch at a time (the first batch
        need not wait for the rest of the read) and failed ones to the writer."""
        size = self.config.params.batch_size
        decoded: list[Item] = []
        failed: list[Item] = []
        for entry in entries:
            started = time.perf_counter()
            item = self._decode(entry)
            item.decode_s = time.perf_counter() - started
            self.metrics.record_decode(entry.id, item.decode_s)
            if item.result is not None:
                failed.append(item)
                continue
            decoded.append(item)
            if len(decoded) == size:
                to_batch.put(decoded)
                decoded = []
        if decoded:
            to_batch.put(decoded)
        if failed:
            to_write.put(failed)

    @staticmethod
    def _try(step: Any) -> None:
        try:
            step()
        except Exception as exc:
            log.warning("%s failed: %s", getattr(step, "__name__", step), exc)

    def _decode(self, entry: Entry) -> Item:
        assert self._preprocess is not None
        uri = entry.fields.get(wire.native.F_URI)
        if uri is None:  # the error result goes where an operator can find it: under the id
            uri = entry.id
        item = Item(uri=uri, entry=entry, reply=wire.reply_kind(entry.fields))
        limit = self.config.params.max_deliveries
        if entry.deliveries > limit:
            self._give_up(item, limit)
            return item
        try:
            request = wire.decode_record(
                entry.fields, item.reply, self.config.data.max_payload_bytes
            )
            item.deadline_ms = request.deadline_ms
            check_deadline(item)
            item.arrays = self._preprocess(request, by_position=item.reply != wire.NATIVE)
        except ZooServingError as exc:
            self._fail(item, exc)
        except Exception as exc:  # a decoder bug must not take the worker down
            log.exception("unexpected error decoding %r", uri)
            self._fail(item, exc)
        return item

    def _give_up(self, item: Item, limit: int) -> None:
        """A record delivered too often (it may kill workers): dead-letter it, answer an error."""
        assert self.queue is not None
        dead = keys.dead_letter(self.config.data.stream)
        exc = ServerError(
            f"record delivered {item.entry.deliveries} times, more than params.max_deliveries="
            f"{limit} (its workers died or stalled); moved to the dead-letter stream {dead}"
        )
        queue = self.queue
        # the copy must exist before the record is acknowledged
        _until_done(lambda: queue.dead_letter(item.entry, str(exc)), "dead-lettering a record")
        self._fail(item, exc)

    def _infer_loop(self, to_batch: _queue.Queue[Any], to_write: _queue.Queue[Any]) -> None:
        assert self._core is not None
        params = self.config.params
        max_wait_s = params.max_wait_ms / 1000.0
        carry: list[Item] = []  # records read and not yet batched
        done = False
        while not done or carry:
            if not carry:
                got = to_batch.get()
                if got is _STOP:
                    return
                carry = got
            deadline = time.monotonic() + max_wait_s
            while len(carry) < params.batch_size and not done:
                try:
                    got = to_batch.get_nowait()
                except _queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._drained:
                        break
                    try:
                        got = to_batch.get(timeout=remaining)
                    except _queue.Empty:
                        break
                if got is _STOP:
                    done = True
                else:
                    carry.extend(got)
            batch, carry = carry[: params.batch_size], carry[params.batch_size :]
            started = time.time()
            self._core.serve(batch)
            self._observe_batch(batch, started)
            to_write.put(batch)

    def _write_loop(self, to_write: _queue.Queue[Any]) -> None:
        assert self.queue is not None
        finished = False
        while not finished:
            got = to_write.get()
            if got is _STOP:
                return
            pending = list(got)
            while len(pending) < 512:
                try:
                    got = to_write.get_nowait()
                except _queue.Empty:
                    break
                if got is _STOP:
                    finished = True
                    break
                pending.extend(got)
            started = time.perf_counter()
            self._write(pending)
            self._observe_written(pending, time.perf_counter() - started)

    def _write(self, items: list[Item]) -> None:
        assert self.queue is not None
        stream = self.config.data.stream
        done = []
        for i in items:
            place = wire.result_place(i.reply, stream, i.uri, i.entry.fields)
            done.append(
                Completion(i.entry, i.uri, i.result or b"", place.key, place.how, place.claim)
            )
        queue = self.queue
        # keep the results until Redis takes them
        _until_done(lambda: queue.complete(done), f"writing {len(done)} results")

    def _fail(self, item: Item, exc: BaseException) -> None:
        assert self._core is not None
        self._core.fail(item, exc)

    # -------------------------------------------------------------- metrics

    def _observe_batch(self, batch: list[Item], started: float) -> None:
        """Stage sums of a batch that began at wall time ``started``: queue wait is from the
        record's XADD (its id) to the batch, less its decode."""
        assert self._core is not None
        decode_s = sum(i.decode_s for i in batch)
        queued_s = sum(max(started - added_at(i.entry.id) - i.decode_s, 0.0) for i in batch)
        infer_s, post_s = self._core.infer_s, self._core.post_s
        self.stats.add_batch(len(batch), queued_s, decode_s, infer_s, post_s)
        answered = time.perf_counter()
        for item in batch:
            item.answered_at = answered
        self.metrics.record_batch(len(batch), decode_s, infer_s, post_s)

    def _observe_written(self, items: list[Item], write_s: float) -> None:
        written = time.perf_counter()
        # records failed before batching were never timed
        self.stats.add_written(sum(written - i.answered_at for i in items if i.answered_at))
        self.stats.recent.add(len(items))
        self.metrics.record_written(len(items), write_s)


def _until_done(step: Any, what: str) -> None:
    """Run ``step`` until it succeeds, backing off (0.1 s doubling to 1 s) while Redis is away."""
    backoff = 0.1
    while True:
        try:
            step()
            return
        except Exception as exc:
            log.warning("%s failed: %s; retrying in %.1fs", what, exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
