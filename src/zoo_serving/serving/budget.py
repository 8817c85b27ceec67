"""``params.memory_budget`` for a :class:`~.host.ModelHost`: models are measured as they load
(resident memory before and after, warm-up included; ``model.yaml``'s ``memory`` until then),
and the least recently used idle model that is not pinned is evicted to make room for a load.
An evicted model stays wanted: records arriving for it load it again. A process whose memory
grew far past its models' (frameworks keep some after an unload) asks its runner for a fresh
one, where the runner can start one (processes, Spark, Ray).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .loading import ModelTable
from .models import ModelState, rss_bytes

log = logging.getLogger("zoo_serving.worker")


class MemoryBudget:
    """The budget of one host's models.

    Args:
        table: the host's models.
        budget: ``params.memory_budget`` in bytes.
        wanted: the versions a model should be loaded in, or None when it is not wanted.
        redis: the host's Redis client (evicted models' stream lengths).
    """

    def __init__(
        self,
        table: ModelTable,
        budget: int,
        wanted: Callable[[str], list[int] | None],
        redis: Callable[[], Any],
    ) -> None:
        self.table = table
        self.budget = budget
        self.wanted = wanted
        self.redis = redis
        self.baseline = rss_bytes()

    def idle(self, state: ModelState) -> bool:
        """No record of the model waiting for a slot, in a slot, or read and unanswered."""
        worker = state.worker
        if worker is None or state.state != "ready":
            return False
        lane = self.table.scheduler.lane(state.name)
        if lane is not None and (lane.pending or lane.running):
            return False
        held = getattr(worker.queue, "held_count", lambda: 0)()
        return held == 0

    def make_room(self, loading: ModelState) -> None:
        """Evict least recently used idle models that are not pinned until ``loading`` fits
        in ``params.memory_budget`` (as far as idle, unpinned models allow)."""
        need = loading.cost or self.typical_cost()
        while True:
            with self.table.lock:
                models = self.table.models.values()
                used = sum(m.cost for m in models if m.worker is not None)
                if used + need <= self.budget:
                    return
                victims = sorted(
                    (m for m in models if not m.pinned and self.idle(m)),
                    key=lambda m: m.last_used,
                )
            if not victims:
                log.warning(
                    "params.memory_budget %.0f MB: model %s needs about %.0f MB, %.0f MB are "
                    "in use and no idle unpinned model can make room; loading anyway",
                    self.budget / 2**20,
                    loading.name,
                    need / 2**20,
                    used / 2**20,
                )
                return
            self.table.unload(victims[0].name, reason="evicted")

    def typical_cost(self) -> int:
        costs = [m.cost for m in self.table.models.values() if m.cost]
        return int(sum(costs) / len(costs)) if costs else 0

    def on_demand(self) -> None:
        """Load evicted models that have records waiting; note which models were used."""
        with self.table.lock:
            evicted = [m for m in self.table.models.values() if m.state == "evicted"]
            for state in self.table.models.values():
                state.touch()
        redis = self.redis()
        if not evicted or redis is None:
            return
        pipe = redis.pipeline(transaction=False)
        for state in evicted:
            pipe.xlen(state.stream)
        try:
            lengths = pipe.execute()
        except Exception as exc:
            log.debug("checking evicted models' streams failed: %s", exc)
            return
        with self.table.lock:
            for state, length in zip(evicted, lengths):
                versions = self.wanted(state.name) if length else None
                if versions:
                    self.table.start_load(state.name, versions)

    def oversized(self) -> bool:
        """The process holds over twice the budget above what it started with."""
        return rss_bytes() > self.baseline + 2 * self.budget
