"""The live status of a stream, for the page at ``/`` (``status.html``) and ``/status.json``:
a thread samples Redis every second (the workers' heartbeats, the stream's counts, the
model's description) and keeps the last minutes of records/s, p50/p99 latency, queue length
and lag for the plots.

Every figure comes from what ``zoo-serve status`` and ``/metrics`` read too: ``served`` and
``throughput_1m`` as ``zoo-serve status`` computes them, ``queued``, ``lag``, ``pending`` and
``dead_letter`` from :func:`~zoo_serving.broker.partitions.stream_stats`, failures by code and the
latency buckets from the heartbeats (``zoo_serving_worker_failures``,
``zoo_serving_worker_latency_seconds``), p50/p99 interpolated in the buckets as Prometheus's
``histogram_quantile`` does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from importlib import resources
from typing import Any

from ..broker.connection import connect
from ..broker.partitions import stream_stats
from ..broker.presence import Presence
from ..config import Config
from ..observe.stats import LATENCY_BUCKETS_MS, bucket_quantile, last_minute_rate

log = logging.getLogger(__name__)

SAMPLE_S = 1.0  # how often Redis is read
HISTORY = 300  # samples kept for the plots: five minutes
LATENCY_WINDOW = 60  # samples the p50 / p99 figures are over: the last minute
RATE_WINDOW = 5  # samples a point of the records/s and latency plots is over


def page() -> bytes:
    """The status page: HTML, CSS and a little JavaScript, nothing fetched from elsewhere."""
    return resources.files(__package__).joinpath("status.html").read_bytes()


class StatusBoard:
    """Samples a stream's status in a thread of its own; :meth:`snapshot` is the JSON.

    Args:
        config: the serving config (``data``: where Redis and the stream are).
        name: the model's name, as the front door serves it.
    """

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.stream = config.data.stream
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._deltas: deque[tuple[float, int, list[int]]] = deque(maxlen=HISTORY)
        self._seen: dict[str, tuple[int, list[int]]] = {}  # worker -> answered, latency
        self._started = time.time()
        self._latest: dict[str, Any] = {"stream": self.stream, "model": name, "sampled": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis: Any = None

    def start(self) -> StatusBoard:
        self._redis = connect(self.config.data, check=False, retries=0, socket_timeout=5.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="zoo-status", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def snapshot(self) -> dict[str, Any]:
        """The latest figures and the history, as ``/status.json`` answers."""
        with self._lock:
            return {**self._latest, "history": list(self._history)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # Redis away: say so on the page, try again
                log.debug("status sample failed: %s", exc)
                with self._lock:
                    self._latest = {**self._latest, "redis": f"Redis does not answer: {exc}"}
            self._stop.wait(SAMPLE_S)

    # ---------------------------------------------------------------- one sample

    def sample(self) -> dict[str, Any]:
        """Read Redis once: the latest figures, and a point of history."""
        data = self.config.data
        presence = Presence(self._redis, self.stream)
        beats = presence.live_heartbeats()
        counts = stream_stats(self._redis, self.stream, data.group)
        model = presence.model()
        now = time.time()
        answered, latency = self._new_since_last(beats)
        self._deltas.append((now, answered, latency))
        recent = [d for d in self._deltas if d[0] > now - RATE_WINDOW - 0.5]
        minute = [d for d in self._deltas if d[0] > now - LATENCY_WINDOW - 0.5]
        point = {
            "t": round(now, 3),
            "rate": round(_rate(recent), 2),
            "p50": _q(0.5, recent),
            "p99": _q(0.99, recent),
            "queued": counts["queued"],
            "lag": counts["lag"],
        }
        failures: dict[str, int] = {}
        for beat in beats.values():
            for code, n in (beat.get("failures") or {}).items():
                failures[code] = failures.get(code, 0) + int(n)
        latest = {
            "stream": self.stream,
            "model": self.name,
            "backend": (model or {}).get("backend"),
            "inputs": (model or {}).get("inputs", []),
            "outputs": (model or {}).get("outputs", []),
            "ready": any(b.get("ready") for b in beats.values()),
            "workers": [_worker(name, beat) for name, beat in sorted(beats.items())],
            "served": sum(
                int(b.get("succeeded", 0)) + int(b.get("failed", 0)) for b in beats.values()
            ),
            "throughput_1m": round(sum(last_minute_rate(b, now) for b in beats.values()), 2),
            "failures": dict(sorted(failures.items())),
            "latency_ms": {
                "p50": _q(0.5, minute),
                "p99": _q(0.99, minute),
                "window_s": LATENCY_WINDOW,
            },
            "latency_buckets_ms": list(LATENCY_BUCKETS_MS),
            **counts,
            "sampled": round(now, 3),
        }
        with self._lock:
            self._history.append(point)
            self._latest = latest
        return latest

    def _new_since_last(self, beats: dict[str, dict[str, Any]]) -> tuple[int, list[int]]:
        """Records answered and their latency counts since the last sample, over workers;
        a worker first seen counts from zero if it started after this board, else from now."""
        answered = 0
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        seen: dict[str, tuple[int, list[int]]] = {}
        for name, beat in beats.items():
            total = int(beat.get("succeeded", 0)) + int(beat.get("failed", 0))
            counts = list((beat.get("latency") or {}).get("counts") or [])
            if len(counts) != len(latency):
                counts = [0] * len(latency)
            before = self._seen.get(name)
            if before is None:
                fresh = float(beat.get("started", 0)) >= self._started
                before = (0, [0] * len(latency)) if fresh else (total, counts)
            answered += max(total - before[0], 0)
            for i, (n, m) in enumerate(zip(counts, before[1])):
                latency[i] += max(n - m, 0)
            seen[name] = (total, counts)
        self._seen = seen
        return answered, latency


def _worker(name: str, beat: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "host": beat.get("host"),
        "pid": beat.get("pid"),
        "runner": beat.get("runner"),
        "ready": bool(beat.get("ready")),
        "succeeded": beat.get("succeeded", 0),
        "failed": beat.get("failed", 0),
        "stuck_s": beat.get("stuck_s", 0),
    }


def _rate(deltas: list[tuple[float, int, list[int]]]) -> float:
    if len(deltas) < 2:
        return 0.0
    span = deltas[-1][0] - deltas[0][0]
    return sum(d[1] for d in deltas[1:]) / span if span > 0 else 0.0


def _q(q: float, deltas: list[tuple[float, int, list[int]]]) -> float | None:
    counts = [sum(col) for col in zip(*(d[2] for d in deltas))] if deltas else []
    value = bucket_quantile(q, counts)
    return None if value is None else round(value, 3)
