"""What a worker has done, counted in memory: records by outcome, failures by code, batches,
records answered over the last minute, and where the time of its records went per stage.

The worker updates a :class:`WorkerStats`; its heartbeat publishes it (:mod:`zoo_serving.broker.
presence`), and ``zoo-serve status``, ``zoo-serve bench`` and /metrics read it from there.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

#: the stages a record's time is split into, in order
STAGES = ("queue_wait", "decode", "inference", "postprocess", "write")
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
    # where the time of records that reached the model went: seconds summed over records
    # (a batch's inference and postprocess count once per record in it); see STAGES
    timed: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # latencies of records answered (XADD to result written), counted per bucket
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_s: float = 0.0

    def add_latencies(self, seconds: list[float]) -> None:
        """Latencies of records just answered, from their XADD to their result written."""
        counts = self.latency_counts
        for s in seconds:
            counts[bisect.bisect_left(LATENCY_BUCKETS_MS, s * 1000.0)] += 1
        self.latency_sum_s += sum(seconds)

    def latency(self) -> dict[str, Any]:
        """The latency counts and their sum, as published in heartbeats."""
        return {"counts": list(self.latency_counts), "sum_s": round(self.latency_sum_s, 6)}

    def stages(self) -> dict[str, float | int]:
        """The stage sums and how many records they are over, as published in heartbeats."""
        return {"records": self.timed, **{k: round(v, 6) for k, v in self.stage_s.items()}}

    def add_batch(
        self, n: int, queued_s: float, decode_s: float, infer_s: float, post_s: float
    ) -> None:
        """A batch of ``n`` records answered: seconds they waited and were decoded (summed
        over them), and the batch's seconds in the model and in postprocessing."""
        stage = self.stage_s
        stage["queue_wait"] += queued_s
        stage["decode"] += decode_s
        stage["inference"] += infer_s * n
        stage["postprocess"] += post_s * n
        self.timed += n

    def add_counts(self, counts: Counts) -> None:
        """Add what one batch counted (kept apart until the batch was known to stand)."""
        self.succeeded += counts.succeeded
        self.failed += counts.failed
        self.batches += counts.batches
        for code, n in counts.failures_by_code.items():
            self.failures_by_code[code] += n

    def add_written(self, write_s: float) -> None:
        """Seconds records spent from their answer to their result written, summed."""
        self.stage_s["write"] += write_s


def last_minute_rate(beat: dict[str, Any], now: float) -> float:
    """Records/s a worker answered over the last minute, or over its life while younger, from
    its heartbeat (``zoo-serve status``'s ``throughput_1m`` and the status page sum these)."""
    return float(beat.get("served_1m", 0)) / min(60.0, max(1.0, now - beat.get("started", 0)))
