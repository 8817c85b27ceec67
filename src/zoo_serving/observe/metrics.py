"""What a server is doing: Prometheus metrics, TensorBoard scalars, stream gauges, lost workers.

One :class:`Metrics` per server. It reads what the server's workers count themselves
(:class:`~.stats.WorkerStats`), the same way whichever runner runs them (:class:`~.fleet.
Fleet`): workers of the server's own process from their stats, workers in other processes or
on other hosts from their heartbeats and, once they end, the final counts their runner hands
back. From those it feeds

- Prometheus, in the server's own ``CollectorRegistry``, served on
  ``http://<log.metrics_host>:<log.metrics_port>/metrics`` when ``log.metrics_port`` is set
  (:mod:`.prometheus`): records succeeded and failed by reason, batch sizes, seconds per
  stage, workers, stream lag, pending and dead-letter counts, and every stream worker's own
  counters;
- TensorBoard scalars under ``<work dir>/summary/<run>`` when ``log.summary`` is on, written
  with TensorBoard's own ``tensorboard.summary.Writer`` (no TensorFlow or torch import): the
  seed's ``Micro Batch Throughput``, ``Partition Number``, ``Total Records Number`` and
  ``Throughput``, one point each per monitor tick in which they changed.

A low-rate monitor thread refreshes the stream gauges from Redis, writes the summary points
and logs a worker whose heartbeat stopped (``worker ... lost``). Prometheus and TensorBoard
are imported only when switched on. ``Metrics()`` without a config is a sink that records
nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..broker.connection import connect
from ..broker.partitions import stream_stats
from ..broker.presence import Presence
from ..config import Config
from ..errors import QueueError
from .fleet import Fleet, Totals
from .models import ModelView
from .prometheus import start_endpoint
from .stats import WorkerStats
from .tensorboard import summary_writer

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.metrics")

SUMMARY_TAGS = ("Micro Batch Throughput", "Partition Number", "Total Records Number", "Throughput")
MONITOR_S = 1.0  # how often the monitor refreshes gauges and writes the summary
LOST_AFTER_S = 10.0  # a heartbeat this old (workers beat every second) is a lost worker


class Metrics:
    """The metrics of one server.

    Args:
        config: the serving config (``log.metrics_port``, ``log.metrics_host``,
            ``log.summary``, the work dir, the stream); None: record nothing.
        server_id: the id this server's workers carry in their heartbeats; the workers
            counted are the server's own (its process's, and those naming it).

    Example::

        metrics = Metrics(config, server_id=server.server_id).start()
        worker = Worker(config, metrics=metrics)   # or workers elsewhere, naming the server
        ...
        metrics.close()
    """

    def __init__(self, config: Config | None = None, *, server_id: str = "") -> None:
        self.config = config
        self.fleet = Fleet(server_id)
        self.metrics_url: str | None = None
        self.summary_dir: Path | None = None
        self._lock = threading.Lock()  # the summary writer and its state
        self._tick = 0
        self._last: Totals | None = None  # the totals at the summary's last tick
        self._last_serving = -1
        self._gauges: dict[str, Any] = {}
        self._stream_error = ""  # why the stream gauges are unknown, "" while they are not
        self._http: Any = None
        self._writer: Any = None
        self._redis: Any = None
        self.models: ModelView | None = None  # each model of the server's index
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> Metrics:
        """Open the endpoint and the summary writer; start the monitor thread."""
        cfg = self.config
        if cfg is None or self._monitor is not None:
            return self
        try:
            self._redis = connect(cfg.data, retries=0, socket_timeout=5.0)
            self.models = ModelView(self._redis, cfg.data.stream, cfg.data.group)
            if cfg.log.metrics_port:
                host, port = cfg.log.metrics_host, cfg.log.metrics_port
                self._http, self._gauges = start_endpoint(
                    host, port, self.fleet, self.heartbeats, self.models
                )
                self.metrics_url = f"http://{host}:{port}/metrics"
                log.info("Prometheus metrics on %s", self.metrics_url)
            if cfg.log.summary:
                run = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
                self.summary_dir = cfg.work_dir / "summary" / run
                self._writer = summary_writer(self.summary_dir)
                log.info("TensorBoard summaries in %s", self.summary_dir)
        except BaseException:
            self.close()  # nothing half-open: the endpoint's port is free again
            raise
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="metrics", daemon=True)
        self._monitor.start()
        return self

    def close(self) -> None:
        """Stop the monitor and the endpoint; write the last summary points and close it."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
            self._summarize()  # the drain's counts: runners hand final ones in before this
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    # -------------------------------------------------------------- workers

    def worker_started(self, name: str, stats: WorkerStats, model: str = "") -> None:
        """A worker of this process began serving ``model``; its :class:`WorkerStats` are
        read from now on."""
        self.fleet.started(name, stats, model)

    def worker_stopped(self, name: str, model: str = "") -> None:
        """A worker of this process stopped serving ``model`` (what it counted still counts)."""
        self.fleet.stopped(name, model)

    def worker_ended(self, name: str, by_model: dict[str, dict[str, Any]]) -> None:
        """A worker in another process ended; its runner hands over its final counts per
        model (:meth:`WorkerStats.published`), the records it drained after its last beat
        too."""
        self.fleet.ended(name, by_model)

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """The heartbeats on the stream, by worker name; empty if Redis does not answer."""
        if self._redis is None or self.config is None:
            return {}
        try:
            return Presence(self._redis, self.config.data.stream).heartbeats()
        except Exception as exc:  # Redis away: the workers log that
            log.debug("reading heartbeats failed: %s", exc)
            return {}

    # -------------------------------------------------------------- monitor

    def _monitor_loop(self) -> None:
        while not self._stop.wait(MONITOR_S):
            self.refresh()

    def refresh(self) -> None:
        """Refresh the stream gauges, log lost workers, take in the heartbeats and write the
        summary points (the monitor's tick)."""
        streams = None  # the models' streams, once read this tick (one read of the index)
        try:
            if self._gauges:
                self._refresh_gauges()
                if self.models is not None:
                    streams = self.models.refresh()
            self._find_lost_workers()
        except Exception as exc:  # Redis away: the workers log that; try again next tick
            log.debug("metrics refresh failed: %s", exc)
        if self.models is not None:
            for model, beats in self.models.heartbeats(streams).items():
                self.fleet.absorb(beats, model)
        self._summarize()

    def _refresh_gauges(self) -> None:
        """The stream gauges from Redis; NaN (unknown), not 0, while Redis refuses a count,
        which is logged once per kind of refusal."""
        assert self.config is not None
        data = self.config.data
        stats: dict[str, float]
        try:
            stats = dict(stream_stats(self._redis, data.stream, data.group))
        except QueueError as exc:
            if str(exc) != self._stream_error:
                log.warning("%s; the stream gauges show NaN until it succeeds", exc)
                self._stream_error = str(exc)
            stats = dict.fromkeys(("lag", "pending", "dead_letter"), float("nan"))
        else:
            if self._stream_error:
                log.info("counting stream %s recovered", data.stream)
                self._stream_error = ""
        self._gauges["lag"].set(stats["lag"])
        self._gauges["pending"].set(stats["pending"])
        self._gauges["dead"].set(stats["dead_letter"])

    def _summarize(self) -> None:
        """One summary tick: the scalars that changed since the last, at the next step.

        Throughputs are over the batches of the tick: records batched over the seconds they
        spent in decode, inference and postprocess (``Micro Batch Throughput``), or in
        inference only (``Throughput``), summed over the server's workers."""
        with self._lock:
            if self._writer is None:
                return
            now, was = self.fleet.totals(), self._last or Totals()
            serving = self.fleet.serving()
            self._tick += 1
            records = now.batched - was.batched
            infer_s = now.seconds("inference") - was.seconds("inference")
            busy_s = infer_s + sum(
                now.seconds(stage) - was.seconds(stage) for stage in ("decode", "postprocess")
            )
            if records > 0 and busy_s > 0:
                self._writer.add_scalar("Micro Batch Throughput", records / busy_s, self._tick)
            if records > 0 and infer_s > 0:
                self._writer.add_scalar("Throughput", records / infer_s, self._tick)
            if serving != self._last_serving:
                self._writer.add_scalar("Partition Number", serving, self._tick)
            if now.written != was.written or self._last is None:
                self._writer.add_scalar("Total Records Number", now.written, self._tick)
            self._last, self._last_serving = now, serving
            self._writer.flush()

    def _find_lost_workers(self) -> None:
        assert self.config is not None
        presence = Presence(self._redis, self.config.data.stream)
        for name, beat, silent_s in presence.take_lost(LOST_AFTER_S):
            log.warning(
                "worker %s (host %s pid %s) lost: no heartbeat for %.0f s; its pending "
                "records go to live workers after params.claim_idle_ms",
                name,
                beat.get("host"),
                beat.get("pid"),
                silent_s,
            )
