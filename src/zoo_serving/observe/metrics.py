"""What a server is doing: Prometheus metrics, TensorBoard scalars, stream gauges, lost workers.

The worker calls one :class:`Metrics` per server at each stage (read, batch, write); it feeds

- Prometheus collectors in the server's own ``CollectorRegistry``, served on
  ``http://<log.metrics_host>:<log.metrics_port>/metrics`` when ``log.metrics_port`` is set:
  records succeeded and failed by reason, batch sizes, seconds per stage (queue wait, decode,
  inference, postprocess, write), stream lag, pending and dead-letter counts, workers;
- TensorBoard scalars under ``<work dir>/summary/<run>`` when ``log.summary`` is on, written with
  TensorBoard's own ``tensorboard.summary.Writer`` (no TensorFlow or torch import): the seed's
  ``Micro Batch Throughput``, ``Partition Number``, ``Total Records Number`` and ``Throughput``.

A low-rate monitor thread refreshes the stream gauges from Redis, flushes the summary and logs a
worker whose heartbeat stopped (``worker ... lost``). Prometheus and TensorBoard are imported
only when switched on. ``Metrics()`` without a config is a sink that records nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..broker.connection import connect
from ..broker.partitions import stream_stats
from ..broker.presence import Presence
from ..broker.queue import added_at
from ..config import Config
from ..errors import MissingDependencyError, ServerError
from .stats import STAGES
from .tensorboard import summary_writer

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.metrics")

SUMMARY_TAGS = ("Micro Batch Throughput", "Partition Number", "Total Records Number", "Throughput")
MONITOR_S = 1.0  # how often the monitor refreshes gauges and flushes the summary
LOST_AFTER_S = 10.0  # a heartbeat this old (workers beat every second) is a lost worker
_STAGE_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metrics sink of one server; the worker calls it at each stage.

    Args:
        config: the serving config (``log.metrics_port``, ``log.metrics_host``,
            ``log.summary``, the work dir, the stream); None: record nothing.

    Example::

        metrics = Metrics(config).start()   # endpoint, summary writer, monitor thread
        worker = Worker(config, metrics=metrics)
        ...
        metrics.close()
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config
        self.metrics_url: str | None = None
        self.summary_dir: Path | None = None
        self._on = False  # anything to record
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}  # worker name -> WorkerStats, kept after it stops
        self._active: set[str] = set()
        self._written = 0
        self._step = 0
        self._registry: Any = None
        self._prom: dict[str, Any] = {}
        self._stage: dict[str, Any] = {}  # stage name -> its histogram child
        self._http: Any = None
        self._writer: Any = None
        self._redis: Any = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> Metrics:
        """Open the endpoint and the summary writer; start the monitor thread."""
        cfg = self.config
        if cfg is None or self._monitor is not None:
            return self
        try:
            if cfg.log.metrics_port:
                self._start_prometheus(cfg.log.metrics_host, cfg.log.metrics_port)
            if cfg.log.summary:
                run = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
                self.summary_dir = cfg.work_dir / "summary" / run
                self._writer = summary_writer(self.summary_dir)
                log.info("TensorBoard summaries in %s", self.summary_dir)
            self._redis = connect(cfg.data, retries=0, socket_timeout=5.0)
        except BaseException:
            self.close()  # nothing half-open: the endpoint's port is free again
            raise
        self._on = bool(self._prom or self._writer)
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="metrics", daemon=True)
        self._monitor.start()
        return self

    def _start_prometheus(self, host: str, port: int) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise MissingDependencyError(
                "log.metrics_port needs prometheus-client: pip install 'zoo-serving[prometheus]'"
            ) from None
        self._registry = reg = prom.CollectorRegistry(auto_describe=True)
        reg.register(_StatsCollector(self))
        p = "zoo_serving_"
        self._prom = {
            "batch": prom.Histogram(
                p + "batch_size", "Records per model batch", registry=reg, buckets=_BATCH_BUCKETS
            ),
            "stage": prom.Histogram(
                p + "stage_seconds",
                "Seconds per stage: queue_wait and decode per record; inference and "
                "postprocess per batch; write per result write",
                ["stage"],
                registry=reg,
                buckets=_STAGE_BUCKETS,
            ),
            "lag": prom.Gauge(p + "stream_lag", "Records not yet read by a worker", registry=reg),
            "pending": prom.Gauge(
                p + "pending", "Records read by a worker and not yet answered", registry=reg
            ),
            "dead": prom.Gauge(
                p + "dead_letter", "Records in the dead-letter stream", registry=reg
            ),
            "workers": prom.Gauge(p + "workers", "Workers of this server serving", registry=reg),
        }
        self._prom["workers"].set_function(lambda: len(self._active))
        self._stage = {name: self._prom["stage"].labels(name) for name in STAGES}
        try:
            self._http, _thread = prom.start_http_server(port, addr=host, registry=reg)
        except OSError as exc:
            raise ServerError(
                f"log.metrics_port: cannot serve metrics on {host}:{port}: {exc}; "
                "pick a free port, or 0 to switch the endpoint off"
            ) from exc
        self.metrics_url = f"http://{host}:{port}/metrics"
        log.info("Prometheus metrics on %s", self.metrics_url)

    def close(self) -> None:
        """Stop the monitor and the endpoint; flush and close the summary."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
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
        self._on = False

    # -------------------------------------------------------------- worker hooks

    def worker_started(self, name: str, stats: Any) -> None:
        """A worker began serving; its :class:`WorkerStats` feed the record counters."""
        with self._lock:
            self._stats[name] = stats
            self._active.add(name)
            self._scalar("Partition Number", len(self._active))

    def worker_stopped(self, name: str) -> None:
        with self._lock:
            self._active.discard(name)
            self._scalar("Partition Number", len(self._active))

    def record_decode(self, entry_id: bytes, decode_s: float) -> None:
        """One record read and decoded: its wait in the stream (from its id) and decode time."""
        if not self._prom:
            return
        waited_s = time.time() - added_at(entry_id)
        self._stage["queue_wait"].observe(max(waited_s, 0.0))
        self._stage["decode"].observe(decode_s)

    def record_batch(self, size: int, decode_s: float, infer_s: float, post_s: float) -> None:
        """One batch through the model; times are seconds spent on its records."""
        if not self._on:
            return
        if self._prom:
            self._prom["batch"].observe(size)
            self._stage["inference"].observe(infer_s)
            self._stage["postprocess"].observe(post_s)
        with self._lock:
            total_s = decode_s + infer_s + post_s
            if total_s > 0:
                self._scalar("Micro Batch Throughput", size / total_s)
            if infer_s > 0:
                self._scalar("Throughput", size / infer_s)
            self._scalar("Partition Number", len(self._active))

    def record_written(self, count: int, write_s: float) -> None:
        """``count`` results written and acknowledged in ``write_s`` seconds."""
        if not self._on:
            return
        if self._prom:
            self._stage["write"].observe(write_s)
        with self._lock:
            self._written += count
            self._scalar("Total Records Number", self._written)

    def _scalar(self, tag: str, value: float) -> None:  # under self._lock
        if self._writer is not None:
            self._step += 1
            self._writer.add_scalar(tag, value, self._step)

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """The live heartbeats on the stream, by worker name; empty if Redis does not answer."""
        if self._redis is None or self.config is None:
            return {}
        try:
            return Presence(self._redis, self.config.data.stream).heartbeats()
        except Exception as exc:  # Redis away: the workers log that
            log.debug("reading heartbeats failed: %s", exc)
            return {}

    def _stats_snapshot(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            stats = list(self._stats.values())
        succeeded = sum(s.succeeded for s in stats)
        failed: dict[str, int] = {}
        for s in stats:
            for code, n in dict(s.failures_by_code).items():
                failed[code] = failed.get(code, 0) + n
        return succeeded, failed

    # -------------------------------------------------------------- monitor

    def _monitor_loop(self) -> None:
        while not self._stop.wait(MONITOR_S):
            self.refresh()

    def refresh(self) -> None:
        """Refresh the stream gauges, flush the summary, log lost workers (the monitor's tick)."""
        assert self.config is not None
        data = self.config.data
        try:
            if self._prom:
                stats = stream_stats(self._redis, data.stream, data.group)
                self._prom["lag"].set(stats["lag"])
                self._prom["pending"].set(stats["pending"])
                self._prom["dead"].set(stats["dead_letter"])
            self._find_lost_workers()
        except Exception as exc:  # Redis away: the workers log that; try again next tick
            log.debug("metrics refresh failed: %s", exc)
        with self._lock:
            if self._writer is not None:
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


class _StatsCollector:
    """Record counters read from the workers' own :class:`WorkerStats` at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        succeeded, failed = self._metrics._stats_snapshot()
        ok = CounterMetricFamily("zoo_serving_records_succeeded", "Records answered with a result")
        ok.add_metric([], succeeded)
        bad = CounterMetricFamily(
            "zoo_serving_records_failed",
            "Records answered with an error, by code",
            labels=["reason"],
        )
        for code, count in sorted(failed.items()):
            bad.add_metric([code], count)
        yield ok
        yield bad
        yield from self._per_worker()

    def _per_worker(self) -> Iterator[Any]:
        """Counters of every worker on the stream, whatever its runner or process, from the
        heartbeats it publishes (about a second old). Several servers on one stream each show
        all of them; the ``worker`` label tells the copies apart."""
        from prometheus_client.core import CounterMetricFamily

        p = "zoo_serving_worker_"
        records = CounterMetricFamily(
            p + "records", "Records a worker answered, by outcome", labels=["worker", "outcome"]
        )
        failures = CounterMetricFamily(
            p + "failures", "Error results of a worker, by code", labels=["worker", "reason"]
        )
        stages = CounterMetricFamily(
            p + "stage_seconds",
            "Seconds a worker's records spent in each stage, summed over records (a batch's "
            "inference and postprocess count once per record in it)",
            labels=["worker", "stage"],
        )
        timed = CounterMetricFamily(
            p + "timed_records", "Records the stage seconds are summed over", labels=["worker"]
        )
        for name, beat in self._metrics.heartbeats().items():
            records.add_metric([name, "succeeded"], beat.get("succeeded", 0))
            records.add_metric([name, "failed"], beat.get("failed", 0))
            for code, count in sorted(beat.get("failures", {}).items()):
                failures.add_metric([name, code], count)
            split = dict(beat.get("stages", {}))
            timed.add_metric([name], split.pop("records", 0))
            for stage, seconds in split.items():
                stages.add_metric([name, stage], seconds)
        yield from (records, failures, stages, timed)
