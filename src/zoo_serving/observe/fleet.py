"""The workers of one server, whatever runner runs them, and what they have done between them.

Workers in the server's own process (the ``threads`` runner) are read from their
:class:`~.stats.WorkerStats` objects. Workers in other processes or on other hosts
(``processes``, ``spark``, ``ray``) are read from their heartbeats, which carry the same
counts (:meth:`~.stats.WorkerStats.published`) and name the server that started them
(``server``), and, once one ends, from the last counts its runner hands back (the drain after
its last beat included). A worker's counts are kept after it stops or dies, so the sums only
grow; a worker killed between two beats loses the records it answered since its last one
(under a second's worth).

Example::

    fleet = Fleet("host-123-ab12cd")
    fleet.absorb(Presence(redis, stream).heartbeats(), model="resnet")
    fleet.totals().succeeded, fleet.totals("resnet").succeeded, fleet.serving()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..broker.presence import HEARTBEAT_TTL_S
from .stats import BATCH_BUCKETS, BATCH_SIZE, STAGE_BUCKETS, STAGES, WorkerStats


@dataclass
class Totals:
    """Counts summed over a server's workers: records by outcome, results written, and the
    histograms (name -> non-cumulative bucket counts and sum; see :class:`~.stats.Histogram`)."""

    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by error code
    written: int = 0
    hist: dict[str, tuple[list[int], float]] = field(default_factory=dict)

    def seconds(self, stage: str) -> float:
        """Seconds summed in the ``stage`` histogram."""
        return self.hist.get(stage, ([], 0.0))[1]

    @property
    def batched(self) -> float:
        """Records that went through the model in a batch."""
        return self.hist.get(BATCH_SIZE, ([], 0.0))[1]


def _empty_hist() -> dict[str, tuple[list[int], float]]:
    hist = {BATCH_SIZE: ([0] * (len(BATCH_BUCKETS) + 1), 0.0)}
    hist.update({stage: ([0] * (len(STAGE_BUCKETS) + 1), 0.0) for stage in STAGES})
    return hist


class Fleet:
    """The workers of the server ``server_id``: in-process ones by their stats, the others by
    their heartbeats and final counts. A worker counts once per model it serves (a worker of
    a model repository serves several, each on its model's stream, under one name).

    Args:
        server_id: the id the server's workers put in their heartbeats.
    """

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._lock = threading.Lock()
        # keyed by (model, worker name); kept after the worker stops
        self._local: dict[tuple[str, str], WorkerStats] = {}
        self._local_serving: set[tuple[str, str]] = set()
        self._remote: dict[tuple[str, str], Mapping[str, Any]] = {}  # last counts, kept after
        self._ended: set[tuple[str, str]] = set()  # remote ones whose final counts are in

    def started(self, name: str, stats: WorkerStats, model: str = "") -> None:
        """A worker of this process began serving ``model``."""
        with self._lock:
            self._local[model, name] = stats
            self._local_serving.add((model, name))

    def stopped(self, name: str, model: str = "") -> None:
        """A worker of this process stopped serving ``model`` (its counts stay)."""
        with self._lock:
            self._local_serving.discard((model, name))

    def absorb(self, beats: Mapping[str, Mapping[str, Any]], model: str = "") -> None:
        """Take in the heartbeats of ``model``'s stream: those of this server's workers in
        other processes update their counts (workers of this process count from their stats)."""
        if not self.server_id:
            return
        with self._lock:
            for name, beat in beats.items():
                key = (model, name)
                if beat.get("server") != self.server_id or key in self._local:
                    continue
                if key in self._ended:  # its final counts are in; an older beat is not news
                    continue
                self._remote[key] = beat

    def ended(self, name: str, by_model: Mapping[str, Mapping[str, Any]]) -> None:
        """A worker in another process ended; ``by_model`` holds its final counts per model
        it served (:meth:`~.stats.WorkerStats.published`)."""
        with self._lock:
            for model, published in by_model.items():
                if (model, name) not in self._local:
                    self._remote[model, name] = published
                    self._ended.add((model, name))

    def serving(self, now: float | None = None, model: str | None = None) -> int:
        """Workers serving now (``model``, or any: each worker once, whatever number of models
        it serves): those of this process between start and stop, the others while their
        heartbeat is fresh (under :data:`HEARTBEAT_TTL_S`) and they did not end."""
        now = time.time() if now is None else now
        with self._lock:
            names = {name for m, name in self._local_serving if model in (None, m)}
            for key, beat in self._remote.items():
                fresh = now - float(beat.get("ts", 0)) <= HEARTBEAT_TTL_S
                if model in (None, key[0]) and key not in self._ended and fresh:
                    names.add(key[1])
            return len(names)

    def models(self) -> list[str]:
        """The models this server's workers have served."""
        with self._lock:
            return sorted({m for m, _ in self._local} | {m for m, _ in self._remote})

    def totals(self, model: str | None = None) -> Totals:
        """Counts summed over every worker this server has had (of ``model`` only, if given)."""
        with self._lock:
            counts: list[Mapping[str, Any]] = [
                s.published() for (m, _), s in self._local.items() if model in (None, m)
            ]
            counts += [c for (m, _), c in self._remote.items() if model in (None, m)]
        totals = Totals(hist=_empty_hist())
        for one in counts:
            totals.succeeded += int(one.get("succeeded", 0))
            totals.written += int(one.get("written", 0))
            for code, n in dict(one.get("failures") or {}).items():
                totals.failed[code] = totals.failed.get(code, 0) + int(n)
            for name, published in dict(one.get("hist") or {}).items():
                kept = totals.hist.get(name)
                buckets = list(published.get("counts") or [])
                if kept is None or len(buckets) != len(kept[0]):  # another release's buckets
                    continue
                merged = [a + int(b) for a, b in zip(kept[0], buckets, strict=True)]
                totals.hist[name] = (merged, kept[1] + float(published.get("sum", 0.0)))
        return totals
