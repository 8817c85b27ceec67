"""A server's metrics per model: what :class:`~.metrics.Metrics` reads of each model of the
server's model index, and the Prometheus families labelled ``model`` (and ``version``) made
of it.

Every model has its own stream (the default model the server's ``data.stream``), so its
workers' heartbeats, its queue and its dead letters are its own; what workers hold of it
(versions loaded, the one serving, memory, load seconds, evictions) is in the model states
they publish (:meth:`~zoo_serving.broker.control.ModelControl.hosts`). Records, failures,
batch sizes and stage seconds are labelled by model only: a hot swap switches versions
between batches, and a counter that moved from one ``version`` label to another would read
as a reset.

Example::

    view = ModelView(redis, "serving_stream")
    view.refresh()                   # the queue counts and model states, once a tick
    view.heartbeats()                # model -> worker -> heartbeat, read now
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ..broker.control import ModelControl
from ..broker.partitions import stream_stats
from ..broker.presence import Presence
from ..errors import QueueError
from .fleet import Fleet
from .stats import BATCH_BUCKETS, BATCH_SIZE, STAGE_BUCKETS, STAGES

log = logging.getLogger("zoo_serving.metrics")

P = "zoo_serving_model_"
QUEUE_COUNTS = ("lag", "pending", "dead_letter")


class ModelView:
    """The models of the server on ``base`` (its ``data.stream``), as Redis has them.

    Args:
        redis: a client of the server's Redis.
        base: the server's ``data.stream``, whose model index lists the models.
        group: the consumer group of the streams.
    """

    def __init__(self, redis: Any, base: str, group: str = "serving") -> None:
        self.redis = redis
        self.base = base
        self.group = group
        self._lock = threading.Lock()
        self._streams: dict[str, str] = {}  # model -> its stream, as last read
        self._queues: dict[str, dict[str, float]] = {}  # model -> QUEUE_COUNTS
        self._hosts: dict[str, dict[str, Any]] = {}  # worker -> model -> its state there

    def streams(self) -> dict[str, str]:
        """Model name -> its stream, from the model index (the last one read, if Redis does
        not answer now)."""
        try:
            index = ModelControl(self.redis, self.base).index()
        except Exception as exc:
            log.debug("reading the model index failed: %s", exc)
            return dict(self._streams)
        streams = {name: str(e.get("stream") or self.base) for name, e in index.items()}
        with self._lock:
            self._streams = streams
        return streams

    def heartbeats(
        self, streams: dict[str, str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Model -> worker name -> its heartbeat on the model's stream; ``streams``: the
        models' streams if just read (:meth:`refresh` returns them), else read now."""
        out = {}
        for model, stream in (self.streams() if streams is None else streams).items():
            try:
                out[model] = Presence(self.redis, stream).heartbeats()
            except Exception as exc:
                log.debug("reading heartbeats of model %s failed: %s", model, exc)
                out[model] = {}
        return out

    def refresh(self) -> dict[str, str]:
        """Read each model's queue counts (NaN while Redis refuses one) and the model states
        the workers published; returns the models' streams it read."""
        queues = {}
        streams = self.streams()
        for model, stream in streams.items():
            try:
                counts = stream_stats(self.redis, stream, self.group)
                queues[model] = {k: float(counts[k]) for k in QUEUE_COUNTS}
            except QueueError:  # the server's own gauge logs the refusal
                queues[model] = dict.fromkeys(QUEUE_COUNTS, float("nan"))
        try:
            hosts = ModelControl(self.redis, self.base).hosts()
        except Exception as exc:
            log.debug("reading model states failed: %s", exc)
            hosts = self._hosts
        with self._lock:
            self._queues, self._hosts = queues, hosts
        return streams

    def snapshot(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
        """(model -> queue counts, worker -> model -> state) as last refreshed."""
        with self._lock:
            return dict(self._queues), dict(self._hosts)


def model_families(view: ModelView, fleet: Fleet) -> Iterator[Any]:
    """The per-model Prometheus families: this server's workers' counts by model (from
    ``fleet``), each model's queue and what workers hold of it (from ``view``)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    queues, hosts = view.snapshot()
    models = sorted(set(fleet.models()) | set(queues) | {m for h in hosts.values() for m in h})
    records = CounterMetricFamily(
        P + "records", "Records of a model answered, by outcome", labels=["model", "outcome"]
    )
    failures = CounterMetricFamily(
        P + "failures", "Error results of a model, by code", labels=["model", "reason"]
    )
    batch = HistogramMetricFamily(
        P + "batch_size", "Records per batch of a model", labels=["model"]
    )
    stages = HistogramMetricFamily(
        P + "stage_seconds",
        "Seconds per stage of a model's records (as zoo_serving_stage_seconds)",
        labels=["model", "stage"],
    )
    workers = GaugeMetricFamily(
        P + "workers", "Workers of this server serving a model", labels=["model"]
    )
    for model in models:
        totals = fleet.totals(model)
        records.add_metric([model, "succeeded"], totals.succeeded)
        records.add_metric([model, "failed"], sum(totals.failed.values()))
        for code, count in sorted(totals.failed.items()):
            failures.add_metric([model, code], count)
        counts, total = totals.hist[BATCH_SIZE]
        batch.add_metric([model], _cumulative(BATCH_BUCKETS, counts), total)
        for stage in STAGES:
            counts, total = totals.hist[stage]
            stages.add_metric([model, stage], _cumulative(STAGE_BUCKETS, counts), total)
        workers.add_metric([model], fleet.serving(model=model))
    yield from (records, failures, batch, stages, workers)
    yield from _queue_families(queues)
    yield from _held_families(hosts)


def _queue_families(queues: Mapping[str, Mapping[str, float]]) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    helps = {
        "lag": "Records of a model not yet read by a worker",
        "pending": "Records of a model read by a worker and not yet answered",
        "dead_letter": "Records in a model's dead-letter stream",
    }
    for count, text in helps.items():
        name = P + ("stream_lag" if count == "lag" else count)
        family = GaugeMetricFamily(name, text, labels=["model"])
        for model, values in sorted(queues.items()):
            family.add_metric([model], values[count])
        yield family


def _held_families(hosts: Mapping[str, Mapping[str, Any]]) -> Iterator[Any]:
    """What the workers hold of each model, summed over workers (memory, evictions) or the
    slowest of them (load seconds)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    loaded = GaugeMetricFamily(
        P + "loaded", "Workers holding a version of a model loaded", labels=["model", "version"]
    )
    serving = GaugeMetricFamily(
        P + "serving",
        "Workers running a model's records that name no version on this version",
        labels=["model", "version"],
    )
    load_s = GaugeMetricFamily(
        P + "load_seconds",
        "Seconds the last load of a model took (its slowest worker)",
        labels=["model"],
    )
    evictions = CounterMetricFamily(
        P + "evictions", "Times a model was unloaded to fit params.memory_budget", labels=["model"]
    )
    memory = GaugeMetricFamily(
        P + "memory_bytes", "Memory a model took when loaded, summed over workers", labels=["model"]
    )
    per_version: dict[tuple[str, str], list[int]] = {}
    per_model: dict[str, list[float]] = {}
    for held in hosts.values():
        for model, state in held.items():
            if not isinstance(state, dict):
                continue
            versions = list(state.get("versions") or [])  # loaded ones; none while not held
            for version in versions:
                counts = per_version.setdefault((model, str(version)), [0, 0])
                counts[0] += 1
                counts[1] += version == state.get("current")
            sums = per_model.setdefault(model, [0.0, 0.0, 0.0])
            sums[0] = max(sums[0], float(state.get("load_s") or 0))
            sums[1] += float(state.get("evictions") or 0)
            sums[2] += float(state.get("memory") or 0) if versions else 0.0
    for (model, version), (held_n, serving_n) in sorted(per_version.items()):
        loaded.add_metric([model, version], held_n)
        serving.add_metric([model, version], serving_n)
    for model, (seconds, evicted, nbytes) in sorted(per_model.items()):
        load_s.add_metric([model], seconds)
        evictions.add_metric([model], evicted)
        memory.add_metric([model], nbytes)
    yield from (loaded, serving, load_s, evictions, memory)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative ``le`` buckets out of per-bucket counts."""
    from prometheus_client.utils import floatToGoString

    out, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append((floatToGoString(bound), float(running)))
    return out
