"""The serving loop every runner runs: read -> decode -> batch -> predict -> postprocess ->
write + ack.

Three stages overlap so the model never waits for Redis: a reader thread reads and decodes
records, the calling thread batches and runs the model, a writer thread writes results and
acknowledges records. Bounded hand-over queues give backpressure between them. A stop request
(the event, a signal handled by the runner, or the stream's control key) stops reading; what was
read is still served, written and acknowledged before :meth:`Worker.run` returns.

Batching is dynamic: a batch takes what has been read, up to ``params.batch_size``, waiting at
most ``params.max_wait_ms`` for more, and not at all when the last read found the stream empty
(nothing more is on its way through this reader, so waiting would only add latency). A
record delivered before (its worker died or gave up on its batch) runs in a batch of its own,
so a record that kills or hangs workers cannot take its batch-mates down with it again.

A watchdog (:mod:`.watchdog`) keeps the records in the pipeline this worker's own in Redis and
gives up on a batch that runs past ``params.batch_timeout_s``: a record alone in it is answered
with a ``batch_timeout`` error, the records of a larger batch are released to be retried one
at a time. The worker is then *stuck*, says so in its heartbeat (not ready) and takes no more
records until the model returns; with ``leave_when_stuck`` (runners that can replace a worker:
processes, Spark, Ray) :meth:`Worker.run` returns at once instead, leaving the call behind.
"""

from __future__ import annotations

import logging
import queue as _queue
import threading
import time
from typing import Any

from .. import wire
from ..backends import Model
from ..broker.connection import connect
from ..broker.partitions import open_queue
from ..broker.presence import Presence
from ..broker.queue import Queue, added_at, consumer_name
from ..config import load_config
from ..errors import BatchTimeoutError, VersionUnavailableError
from ..observe.metrics import Metrics
from ..observe.stats import Counts, WorkerStats
from ..repository.layout import served_name
from .batch import BatchCore, load_served_model
from .batcher import OwnBatches, SharedBatches
from .heartbeat import Heartbeat
from .reader import STOP, Item, Reader
from .scheduler import Scheduler
from .versions import Versions
from .watchdog import Running, Watchdog
from .writer import Writer

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.worker")


class Worker:
    """One serving worker: one model, one consumer in the stream's consumer group.

    Args:
        config: the serving config (or anything :func:`load_config` takes).
        queue: the broker consumer; by default a :class:`RedisStreamQueue` on ``data.src``.
        model: an already loaded model; by default the one at ``model.path``.
        name: the consumer name; by default host-pid plus a counter.
        metrics: the server's metrics sink, told when the worker starts and stops serving
            (it reads :attr:`stats`); by default one that records nothing.
        server_id: the server whose runner started this worker; its heartbeat says so.
        leave_when_stuck: when a batch runs past ``params.batch_timeout_s``, :meth:`run`
            returns (with :attr:`left_stuck` set) so the runner can replace the worker; else
            the worker reports itself unhealthy and waits for the model to return.
        model_name: the model's name, given in every answer; default :func:`served_name`.
        version: the number of the version at ``model.path`` (1).
        executor: execution slots shared with other models' workers; by default the worker
            runs its batches in a thread of its own.

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
        leave_when_stuck: bool = False,
        model_name: str | None = None,
        version: int = 1,
        executor: Scheduler | None = None,
        weight: float = 1.0,
        server_id: str = "",
    ) -> None:
        self.config = load_config(config)
        self.model_name = model_name or served_name(self.config)
        self.executor = executor
        self.weight = weight
        self.server_id = server_id
        with Worker._count_lock:
            Worker._count += 1
            number = Worker._count
        self.name = name or consumer_name(str(number))
        self.queue = queue
        self._given_model = model
        self.stats = WorkerStats()
        self.versions = Versions(self.model_name, self.config, self.stats, version)
        self.ready = False
        self._redis: Any = None
        self.leave_when_stuck = leave_when_stuck
        self.left_stuck = False  # run() returned while the model was stuck in a call
        self._heartbeat: Heartbeat | None = None
        self._reader: Reader | None = None
        self._writer: Writer | None = None
        self._watchdog: Watchdog | None = None
        self._started = time.time()
        self.metrics = metrics or Metrics()
        self._core: BatchCore | None = None
        self._to_write: _queue.Queue[Any] = _queue.Queue(maxsize=8)

    # -------------------------------------------------------------- lifecycle

    def load(self) -> Worker:
        """Connect, create the consumer group, load and warm up the model."""
        cfg = self.config
        if self.queue is None:
            # the worker blocks 100 ms at most: a socket silent for 10 s is a dead one
            self._redis = connect(
                cfg.data, retries=0, socket_timeout=10.0, socket_connect_timeout=5.0
            )
            self.queue = open_queue(
                self._redis, cfg.data, cfg.data.stream, self.name, cfg.params.claim_idle_ms
            )
        self.queue.check_access()  # a user without EVALSHA, say, fails here, not per write
        self.queue.setup(cfg.data.max_queue_len)
        if self._given_model is None:
            model = load_served_model(cfg)
        else:
            model = self._given_model
            model.warmup(cfg.params.batch_size)
        first = self.versions.add(self.versions.current, model)
        self._core = first.core  # answers records that fail before the model
        self._watchdog = Watchdog(
            self.queue,
            claim_idle_ms=cfg.params.claim_idle_ms,
            batch_timeout_s=cfg.params.batch_timeout_s,
            on_timeout=self._on_timeout,
        )
        watchdog = self._watchdog
        self._reader = Reader(
            cfg,
            self.queue,
            self.versions.resolve,
            self._core,
            paused=lambda: watchdog.stuck,
        )
        self._writer = Writer(cfg, self.queue, self._core, self.stats)
        if self._redis is not None:
            presence = Presence(self._redis, cfg.data.stream)
            self._heartbeat = Heartbeat(
                presence,
                cfg,
                self.name,
                self.stats,
                started=self._started,
                stuck=watchdog.stuck_for_s,
                server_id=self.server_id,
            )
            # before ``ready`` is set, so whoever sees it sees Redis agree
            self._heartbeat.announce(model)
        self.ready = True
        log.info("worker %s ready: %s model %s", self.name, model.backend, model.path)
        return self

    @property
    def model(self) -> Model | None:
        """The model of the version records run on by default (None before :meth:`load`)."""
        version = self.versions.get(None)
        return version.model if version is not None else self._given_model

    def switch(self, number: int) -> None:
        """Records that name no version run on ``number`` from the next batch on."""
        version = self.versions.switch(number)
        if self._heartbeat is not None:
            self._heartbeat.announce(version.model)

    def published_by_model(self) -> dict[str, dict[str, Any]]:
        """What this worker counted, by model (its one): the final counts a runner hands
        back to the server's metrics when the worker ends."""
        return {self.model_name: self.stats.published()}

    @property
    def healthy(self) -> bool:
        """Ready, and not stuck in a batch past ``params.batch_timeout_s``."""
        return self.ready and not (self._watchdog is not None and self._watchdog.stuck)

    def close(self) -> None:
        """Free the models (unless a call is still stuck in one) and the connection."""
        if not self.left_stuck:
            if self.versions.numbers():
                self.versions.close()
            elif self._given_model is not None:
                self._given_model.close()
        if self.queue is not None:
            self.queue.close()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then finish every record already read and return.

        With ``leave_when_stuck``, or once ``stop`` is set, a batch stuck past
        ``params.batch_timeout_s`` is left behind: what can be written is written, and this
        returns with :attr:`left_stuck` set.
        """
        if not self.ready:
            self.load()
        assert self._reader and self._writer and self._watchdog
        halt = threading.Event()  # stop reading: a stop, a stop request, or leaving stuck
        written = threading.Event()  # the writer is done: nothing held needs refreshing
        # the hand-overs carry lists (a read's records, a batch's results): one queue
        # operation per list, not per record, which a 10,000 records/s worker feels
        to_batch: _queue.Queue[Any] = _queue.Queue(maxsize=4)  # up to a batch each
        to_write = self._to_write = _queue.Queue(maxsize=8)
        left = lambda: self.left_stuck  # noqa: E731
        stage: OwnBatches | SharedBatches
        inlet: Any = to_batch  # where the reader hands its records
        if self.executor is None:
            stage = OwnBatches(self.config, self._reader, self._serve, left)
        else:  # the shared execution slots run the batches; the reader feeds their lane
            stage = inlet = SharedBatches(
                self.executor, self.model_name, self.config, self.weight, self._reader, left
            )
        infer = self._thread("infer", stage.loop, to_batch, to_write)
        threads = [
            self._thread("read", self._reader.loop, halt, inlet, to_write),
            self._thread("write", self._writer.loop, to_write, halt, written),
            self._thread("watch", self._watchdog.loop, written),
        ]
        if self._heartbeat is not None:
            threads.append(self._thread("heartbeat", self._heartbeat.loop, halt, self._healthy))
        self.metrics.worker_started(self.name, self.stats, model=self.model_name)
        for t in [infer, *threads]:
            t.start()
        try:
            self._supervise(stop, halt, infer)
        finally:
            halt.set()
            if infer.is_alive():  # left in a stuck model call: the writer ends without it
                self._reader.abandoned.set()
                to_write.put(STOP)
            for t in threads:
                t.join()
            if self._heartbeat is not None:
                self._heartbeat.clear()
            self.metrics.worker_stopped(self.name, model=self.model_name)
        log.info(
            "worker %s stopped: %d succeeded, %d failed",
            self.name,
            self.stats.succeeded,
            self.stats.failed,
        )

    def _thread(self, stage: str, target: Any, *args: Any) -> threading.Thread:
        return threading.Thread(target=target, args=args, name=f"{self.name}-{stage}", daemon=True)

    def _healthy(self) -> bool:
        return self.healthy

    def _supervise(self, stop: threading.Event, halt: threading.Event, infer: Any) -> None:
        """Wait for the infer stage; leave it behind when it is stuck and must not be waited
        for (``leave_when_stuck``, or a stop)."""
        assert self._watchdog is not None
        while infer.is_alive():
            if stop.is_set():
                halt.set()
            if self._watchdog.stuck and (self.leave_when_stuck or halt.is_set()):
                self.left_stuck = True
                log.error(
                    "worker %s: leaving a model call stuck for %.1fs (params.batch_timeout_s="
                    "%g); what was read and not answered is taken over by other workers",
                    self.name,
                    self._watchdog.stuck_for_s(),
                    self.config.params.batch_timeout_s,
                )
                return
            infer.join(0.05)

    # -------------------------------------------------------------- stages

    def serve_batch(self, batch: list[Item]) -> None:
        """Run a batch the shared slots took from this worker's lane, and hand it to the
        writer (called in a slot's thread)."""
        self._serve(batch, self._to_write)

    def _serve(self, batch: list[Item], to_write: _queue.Queue[Any]) -> None:
        assert self._core is not None and self._watchdog is not None and self.queue is not None
        # records taken over by other workers while this one was stuck are theirs now
        batch = [i for i in batch if self.queue.holds(i.entry)]
        if not batch:
            return
        version = self.versions.get(batch[0].version)
        if version is None:  # retired meanwhile: run what asked for no version on the newest
            self._rehome(batch, to_write)
            return
        counts = Counts()
        started = time.time()
        running = self._watchdog.begin(batch)
        version.running += 1
        try:
            version.core.serve(batch, counts)
        finally:
            version.running -= 1
        if self._watchdog.end(running):
            log.warning(
                "worker %s: the model returned from the batch given up on after %.1fs; its "
                "results are dropped, the worker serves again",
                self.name,
                time.monotonic() - running.started,
            )
            self._watchdog.refresh()  # and learns which records are no longer its own
            return
        self.stats.add_counts(counts)
        self._observe_batch(batch, started, version.core)
        to_write.put(batch)

    def _rehome(self, batch: list[Item], to_write: _queue.Queue[Any]) -> None:
        """A batch whose version was retired after it was decoded: records that named no
        version run on the newest; one that named the retired version is answered so."""
        assert self._core is not None
        asked = [i for i in batch if wire.native.requested_version(i.entry.fields) is not None]
        for item in asked:
            try:
                self.versions.resolve(item.version)
            except VersionUnavailableError as exc:
                self._core.fail(item, exc)
        if asked:
            to_write.put(asked)
        rest = [i for i in batch if i not in asked]
        for item in rest:
            item.version = self.versions.current
        if rest:
            self._serve(rest, to_write)

    def _on_timeout(self, running: Running) -> None:
        """A batch ran past ``params.batch_timeout_s`` (called in the watchdog's thread)."""
        assert self._core is not None and self.queue is not None
        limit = self.config.params.batch_timeout_s
        items: list[Item] = list(running.items)
        if len(items) == 1:
            item = items[0]
            # a copy: the stuck call may still set the original's result when it returns
            answer = Item(uri=item.uri, entry=item.entry, reply=item.reply)
            self._core.fail(
                answer,
                BatchTimeoutError(
                    f"the model ran longer than params.batch_timeout_s={limit:g}s on this "
                    "record, alone in its batch; it was given up on"
                ),
            )
            self._to_write.put([answer])
            log.error(
                "worker %s: the model ran over params.batch_timeout_s=%gs on record uri=%s "
                "alone: answered with a batch_timeout error; the worker is stuck",
                self.name,
                limit,
                item.uri.decode("utf-8", "replace"),
            )
            return
        self.queue.release([i.entry for i in items])
        log.error(
            "worker %s: a batch of %d records ran over params.batch_timeout_s=%gs: given up; "
            "its records are retried one at a time after params.claim_idle_ms=%d; the worker "
            "is stuck",
            self.name,
            len(items),
            limit,
            self.config.params.claim_idle_ms,
        )

    # -------------------------------------------------------------- metrics

    def _observe_batch(self, batch: list[Item], started: float, core: BatchCore) -> None:
        """Stage sums of a batch that began at wall time ``started``: queue wait is from the
        record's XADD (its id) to the batch, less its decode."""
        decode_s = [i.decode_s for i in batch]
        queued_s = [max(started - added_at(i.entry.id) - i.decode_s, 0.0) for i in batch]
        self.stats.add_batch(queued_s, decode_s, core.infer_s, core.post_s)
        answered = time.perf_counter()
        for item in batch:
            item.answered_at = answered
