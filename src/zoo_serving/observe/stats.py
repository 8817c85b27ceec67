"""What a worker has done, counted in memory: records by outcome, failures by code, batches,
records answered over the last minute, where the time of its records went per stage, and
histograms of its batch sizes and stage times.

The worker updates a :class:`WorkerStats`; its heartbeat publishes it
(:meth:`WorkerStats.published`, through :mod:`zoo_serving.broker.presence`), and ``zoo-serve
status``, ``zoo-serve bench`` and the server's /metrics and TensorBoard summary read it from
there, or, for workers in the server's own process, from the object itself. One count, kept
by the worker, whatever runner runs it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: the stages a record's time is split into, in order
STAGES = ("queue_wait", "decode", "inference", "postprocess", "write")
#: upper bounds (Prometheus ``le``) of the stage-time histograms, seconds; +Inf follows
STAGE_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
#: upper bounds of the batch-size histogram, records; +Inf follows
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_SIZE = "batch_size"  # the batch-size histogram's name in published stats


class Histogram:
    """Observations counted in buckets, as Prometheus keeps them: ``counts[i]`` holds those
    at most ``bounds[i]`` and above the bound before (not cumulative), the last one those
    above every bound; ``sum`` adds the values up."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def published(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": round(self.sum, 6)}


#: upper bounds (ms) of the buckets of a record's latency, from its XADD to its result written
#: (a last bucket, +Inf, holds the rest): what heartbeats publish, /metrics exposes
#: (``zoo_serving_worker_latency_seconds``) and the status page turns into p50 / p99
LATENCY_BUCKETS_MS = (
    *(0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0),
    *(100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0),
)


def bucket_quantile(q: float, counts: list[int] | tuple[int, ...]) -> float | None:
    """The ``q`` quantile (0..1) in ms of latencies counted in :data:`LATENCY_BUCKETS_MS`
    buckets (``counts``: one per bucket, +Inf last), interpolated within the bucket it falls
    in, as Prometheus's ``histogram_quantile`` does; None without counts. In +Inf it is the
    last finite bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(LATENCY_BUCKETS_MS):
                return LATENCY_BUCKETS_MS[-1]
            low = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
            return low + (LATENCY_BUCKETS_MS[i] - low) * (rank - seen) / n
        seen += n
    return LATENCY_BUCKETS_MS[-1]


class RateWindow:
    """Events counted in one-second buckets over the last ``window_s`` seconds."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int = 1, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        with self._lock:
            if self._buckets and self._buckets[-1][0] == second:
                self._buckets[-1][1] += count
            else:
                self._buckets.append([second, count])
            self._prune(second)

    def count(self, now: float | None = None) -> int:
        """Events in the last ``window_s`` seconds."""
        second = int(time.time() if now is None else now)
        with self._lock:
            self._prune(second)
            return sum(n for _, n in self._buckets)

    def _prune(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()


@dataclass
class Counts:
    """Records by outcome, failures by code, and batches."""

    succeeded: int = 0
    failed: int = 0
    batches: int = 0
    failures_by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class WorkerStats(Counts):
    """What one worker has done so far."""

    recent: RateWindow = field(default_factory=RateWindow)  # records answered, last minute
    written: int = 0  # records answered: result written and acknowledged
    # where the time of records that reached the model went: seconds summed over records
    # (a batch's inference and postprocess count once per record in it); see STAGES
    timed: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # records per model batch; seconds per record (queue_wait, decode), per batch (inference,
    # postprocess) and per result write (write)
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    stage_hist: dict[str, Histogram] = field(
        default_factory=lambda: {stage: Histogram(STAGE_BUCKETS) for stage in STAGES}
    )
    # latencies of records answered (XADD to result written), counted per bucket
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_s: float = 0.0

    def add_latencies(self, seconds: list[float]) -> None:
        """Latencies of records just answered, from their XADD to their result written."""
        counts = self.latency_counts
        for s in seconds:
            counts[bisect_left(LATENCY_BUCKETS_MS, s * 1000.0)] += 1
        self.latency_sum_s += sum(seconds)

    def latency(self) -> dict[str, Any]:
        """The latency counts and their sum, as published in heartbeats."""
        return {"counts": list(self.latency_counts), "sum_s": round(self.latency_sum_s, 6)}

    def stages(self) -> dict[str, float | int]:
        """The stage sums and how many records they are over, as published in heartbeats."""
        return {"records": self.timed, **{k: round(v, 6) for k, v in self.stage_s.items()}}

    def published(self) -> dict[str, Any]:
        """Everything counted, as JSON-ready values: what a heartbeat carries."""
        hist = {BATCH_SIZE: self.batch_sizes.published()}
        hist.update({stage: h.published() for stage, h in self.stage_hist.items()})
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "written": self.written,
            "served_1m": self.recent.count(),  # answered in the last minute
            "failures": dict(self.failures_by_code),  # by error code
            "batches": self.batches,
            "stages": self.stages(),
            "hist": hist,
        }

    def add_batch(
        self, queued_s: Sequence[float], decode_s: Sequence[float], infer_s: float, post_s: float
    ) -> None:
        """A batch answered: the seconds each of its records waited and was decoded, and the
        batch's seconds in the model and in postprocessing."""
        n = len(queued_s)
        stage, hist = self.stage_s, self.stage_hist
        for waited, decoded in zip(queued_s, decode_s, strict=True):
            hist["queue_wait"].observe(waited)
            hist["decode"].observe(decoded)
        stage["queue_wait"] += sum(queued_s)
        stage["decode"] += sum(decode_s)
        stage["inference"] += infer_s * n
        stage["postprocess"] += post_s * n
        hist["inference"].observe(infer_s)
        hist["postprocess"].observe(post_s)
        self.batch_sizes.observe(n)
        self.timed += n

    def add_counts(self, counts: Counts) -> None:
        """Add what one batch counted (kept apart until the batch was known to stand)."""
        self.succeeded += counts.succeeded
        self.failed += counts.failed
        self.batches += counts.batches
        for code, n in counts.failures_by_code.items():
            self.failures_by_code[code] += n

    def merge(self, other: WorkerStats) -> None:
        """Add everything ``other`` counted (a model host sums its models' workers; what
        ``other`` answered in the last minute counts as answered now)."""
        self.add_counts(other)
        self.written += other.written
        self.timed += other.timed
        self.recent.add(other.recent.count())
        for stage, seconds in other.stage_s.items():
            self.stage_s[stage] += seconds
        for mine, theirs in [
            (self.batch_sizes, other.batch_sizes),
            *((self.stage_hist[s], other.stage_hist[s]) for s in STAGES),
        ]:
            mine.counts = [a + b for a, b in zip(mine.counts, theirs.counts, strict=True)]
            mine.sum += theirs.sum
        self.latency_counts = [
            a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)
        ]
        self.latency_sum_s += other.latency_sum_s

    def add_written(self, count: int, records_s: float, write_s: float) -> None:
        """``count`` results written and acknowledged in one step of ``write_s`` seconds;
        ``records_s``: the seconds they spent from their answer to written, summed."""
        self.written += count
        self.recent.add(count)
        self.stage_s["write"] += records_s
        self.stage_hist["write"].observe(write_s)


def last_minute_rate(beat: dict[str, Any], now: float) -> float:
    """Records/s a worker answered over the last minute, or over its life while younger, from
    its heartbeat (``zoo-serve status``'s ``throughput_1m`` and the status page sum these)."""
    return float(beat.get("served_1m", 0)) / min(60.0, max(1.0, now - beat.get("started", 0)))
