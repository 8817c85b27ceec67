"""The Prometheus side of :class:`~.metrics.Metrics`: a server's own registry, its endpoint, and
the collector that reads the workers' counts when /metrics is scraped.

Every count comes from the workers' own :class:`~.stats.WorkerStats`, through the server's
:class:`~.fleet.Fleet` (this server's workers, whatever runner runs them) or through the
heartbeats on the stream (the ``zoo_serving_worker_*`` series, every worker of the stream).
Only the stream gauges (lag, pending, dead letters) are set, by the metrics monitor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import MissingDependencyError, ServerError
from .fleet import Fleet, Totals
from .models import ModelView, _cumulative, model_families
from .stats import BATCH_BUCKETS, BATCH_SIZE, LATENCY_BUCKETS_MS, STAGE_BUCKETS, STAGES

P = "zoo_serving_"


def start_endpoint(
    host: str,
    port: int,
    fleet: Fleet,
    heartbeats: Callable[[], Mapping[str, Any]],
    models: ModelView | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Serve a new registry on ``host:port``: returns the HTTP server (to shut down) and the
    stream gauges by name (``lag``, ``pending``, ``dead``) for the monitor to set."""
    try:
        import prometheus_client as prom
    except ImportError:
        raise MissingDependencyError(
            "log.metrics_port needs prometheus-client: pip install 'zoo-serving[prometheus]'"
        ) from None
    reg = prom.CollectorRegistry(auto_describe=True)
    reg.register(_Collector(fleet, heartbeats, models))
    gauges = {
        "lag": prom.Gauge(P + "stream_lag", "Records not yet read by a worker", registry=reg),
        "pending": prom.Gauge(
            P + "pending", "Records read by a worker and not yet answered", registry=reg
        ),
        "dead": prom.Gauge(P + "dead_letter", "Records in the dead-letter stream", registry=reg),
    }
    try:
        http, _thread = prom.start_http_server(port, addr=host, registry=reg)
    except OSError as exc:
        raise ServerError(
            f"log.metrics_port: cannot serve metrics on {host}:{port}: {exc}; "
            "pick a free port, or 0 to switch the endpoint off"
        ) from exc
    return http, gauges


class _Collector:
    """The series read at scrape time: this server's workers' counts and histograms, and
    every stream worker's own counters from its heartbeat."""

    def __init__(
        self,
        fleet: Fleet,
        heartbeats: Callable[[], Mapping[str, Any]],
        models: ModelView | None,
    ) -> None:
        self._fleet = fleet
        self._heartbeats = heartbeats
        self._models = models

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        beats = self._heartbeats()
        if self._models is not None:  # as fresh as the beats, not the monitor's last tick
            for model, model_beats in self._models.heartbeats().items():
                self._fleet.absorb(model_beats, model)
        totals = self._fleet.totals()
        ok = CounterMetricFamily(P + "records_succeeded", "Records answered with a result")
        ok.add_metric([], totals.succeeded)
        bad = CounterMetricFamily(
            P + "records_failed", "Records answered with an error, by code", labels=["reason"]
        )
        for code, count in sorted(totals.failed.items()):
            bad.add_metric([code], count)
        workers = GaugeMetricFamily(P + "workers", "Workers of this server serving")
        workers.add_metric([], self._fleet.serving())
        yield from (ok, bad, *_histograms(totals), workers)
        yield from _per_worker(beats)
        if self._models is not None:
            yield from model_families(self._models, self._fleet)


def _histograms(totals: Totals) -> Iterator[Any]:
    from prometheus_client.core import HistogramMetricFamily

    batch = HistogramMetricFamily(P + "batch_size", "Records per model batch")
    counts, total = totals.hist[BATCH_SIZE]
    batch.add_metric([], _cumulative(BATCH_BUCKETS, counts), total)
    stages = HistogramMetricFamily(
        P + "stage_seconds",
        "Seconds per stage: queue_wait and decode per record; inference and postprocess per "
        "batch; write per result write",
        labels=["stage"],
    )
    for stage in STAGES:
        counts, total = totals.hist[stage]
        stages.add_metric([stage], _cumulative(STAGE_BUCKETS, counts), total)
    yield from (batch, stages)


def _per_worker(beats: Mapping[str, Any]) -> Iterator[Any]:
    """Counters of every worker on the stream, whatever its runner, process or server, from
    the heartbeats it publishes (about a second old). Several servers on one stream each show
    all of them; the ``worker`` label tells the copies apart."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    p = P + "worker_"
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
    latency = HistogramMetricFamily(
        p + "latency_seconds",
        "Seconds from a record's XADD to its result written, of the records a worker answered",
        labels=["worker"],
    )
    bounds = tuple(b / 1000 for b in LATENCY_BUCKETS_MS)
    for name, beat in beats.items():
        counts = (beat.get("latency") or {}).get("counts")
        if counts and len(counts) == len(bounds) + 1:  # another release's buckets: left out
            total = float(beat["latency"].get("sum_s", 0.0))
            latency.add_metric([name], _cumulative(bounds, counts), total)
        records.add_metric([name, "succeeded"], beat.get("succeeded", 0))
        records.add_metric([name, "failed"], beat.get("failed", 0))
        for code, count in sorted(beat.get("failures", {}).items()):
            failures.add_metric([name, code], count)
        split = dict(beat.get("stages", {}))
        timed.add_metric([name], split.pop("records", 0))
        for stage, seconds in split.items():
            stages.add_metric([name, stage], seconds)
    yield from (records, failures, stages, timed, latency)
