"""Every model one worker process serves: a :class:`~.worker.Worker` per model, each on the
model's own stream, sharing the process's execution slots (:mod:`.scheduler`).

A :class:`ModelHost` follows the wanted state the server publishes in Redis
(:mod:`zoo_serving.broker.control`), whatever the runner and wherever it runs: it loads models
(and new versions, warmed up beside the served ones, switched to between two batches),
unloads them (their workers stop reading and drain; queued records stay queued), and keeps
``params.memory_budget``: models are measured as they load, and the least recently used idle
model that is not pinned is evicted to make room; records for an evicted model load it again
on demand. Loads run outside the execution slots, at most ``params.max_loads`` at a time.

With ``model.path`` (one model) the runners run a plain :class:`~.worker.Worker` instead.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from .. import keys
from ..broker.connection import connect
from ..broker.control import ModelControl
from ..broker.queue import consumer_name
from ..config import Config
from ..observe.metrics import Metrics
from ..observe.stats import WorkerStats
from .budget import MemoryBudget
from .loading import ModelTable
from .models import rss_bytes, slot_count
from .refuser import Refuser
from .scheduler import Scheduler
from .worker import Worker

log = logging.getLogger("zoo_serving.worker")

TICK_S = 0.05  # how often the host looks at the wanted state and at evicted models' streams
PUBLISH_S = 1.0  # how often it publishes its models' states (at once when one changes)


class ModelHost:
    """The models of one worker process.

    Args:
        config: the server's config (``model.repository`` set).
        name: a name for this host (its model states' field); default host-pid-counter.
        metrics: the server's metrics sink, handed to every model's worker.
        leave_when_stuck: as for :class:`~.worker.Worker`; also: leave to be recycled when
            the process holds far more memory than its models (the runner starts a fresh one).
    """

    _count = 0

    def __init__(
        self,
        config: Config,
        *,
        name: str | None = None,
        metrics: Metrics | None = None,
        leave_when_stuck: bool = False,
        server_id: str = "",
    ) -> None:
        ModelHost._count += 1
        self.config = config
        self.name = name or consumer_name(f"host{ModelHost._count}")
        self.metrics = metrics or Metrics()
        self.leave_when_stuck = leave_when_stuck
        self.left_stuck = False
        self.recycle = False  # left to give memory back
        self.ready = False
        self.slots = slot_count(config)
        self.scheduler = Scheduler()
        self._redis: Any = None
        self._control: ModelControl | None = None
        self._gen = -1
        self._wanted: dict[str, dict[str, Any]] = {}
        self._published = 0.0
        self._published_states: Any = None  # each model's (state, versions) when last published
        self._refusers: dict[str, Refuser] = {}
        self.table = ModelTable(
            config,
            self.slots,
            self.scheduler,
            self.metrics,
            leave_when_stuck,
            name=self.name,
            server_id=server_id,
        )
        self.budget = MemoryBudget(
            self.table, config.params.memory_budget, self._wanted_versions, lambda: self._redis
        )
        if config.params.memory_budget:
            self.table.before_load = self.budget.make_room

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> ModelHost:
        """Connect and load what is wanted now; raises when not one model could load."""
        self._redis = connect(self.config.data, retries=0, socket_timeout=10.0)
        self._control = ModelControl(self._redis, self.config.data.stream)
        self._follow()
        self.table.wait_loads()
        loaded = [m for m in self.table.models.values() if m.state == "ready"]
        failed = [m for m in self.table.models.values() if m.state == "failed"]
        if failed and not loaded:
            raise failed[0].error_obj or RuntimeError(failed[0].error)
        self.ready = True
        self._publish(force=True)
        log.info(
            "worker %s ready: models %s; %d execution slot(s)",
            self.name,
            ", ".join(f"{m.name} v{m.current}" for m in loaded) or "none yet",
            self.slots,
        )
        return self

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``; then stop every model's worker (each drains) and return."""
        if not self.ready:
            self.load()
        slots = [
            threading.Thread(target=self._slot, name=f"{self.name}-slot{i}", daemon=True)
            for i in range(self.slots)
        ]
        for t in slots:
            t.start()
        try:
            while not stop.wait(TICK_S):
                self._follow()
                self.table.retire_versions()
                if self.budget.budget:
                    self.budget.on_demand()
                    self._recycle_check()
                self._publish()
                if self._left():
                    return
        finally:
            with self.table.lock:
                names = list(self.table.models)
            for name in names:
                self.table.unload(name, reason="stopping")
            for refuser in self._refusers.values():
                refuser.stop()
            self.scheduler.stop()
            for t in slots:
                t.join(5 if self.left_stuck else None)
            self.table.shutdown()
            self._publish(force=True, gone=True)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    @property
    def healthy(self) -> bool:
        with self.table.lock:
            return self.ready and all(
                m.worker.healthy for m in self.table.models.values() if m.worker is not None
            )

    @property
    def stats(self) -> WorkerStats:
        """What every model's worker did, summed."""
        total = WorkerStats()
        with self.table.lock:
            parts = [m.worker.stats for m in self.table.models.values() if m.worker is not None]
        for part in [*self.table.finished.values(), *parts]:
            total.merge(part)
        return total

    def published_by_model(self) -> dict[str, dict[str, Any]]:
        """What each model's workers counted, those that stopped included: the final counts
        a runner hands back to the server's metrics when this host ends."""
        with self.table.lock:
            by_model = {name: WorkerStats() for name in self.table.finished}
            for name, stats in self.table.finished.items():
                by_model[name].merge(stats)
            for name, m in self.table.models.items():
                if m.worker is not None:
                    by_model.setdefault(name, WorkerStats()).merge(m.worker.stats)
        return {name: stats.published() for name, stats in by_model.items()}

    # ------------------------------------------------------------------ the wanted state

    def _follow(self) -> None:
        """Read the wanted state when it moved; load, add versions, unload to match it."""
        assert self._control is not None
        gen = self._control.generation()
        if gen != self._gen:
            self._gen, self._wanted = self._control.wanted()
            self.table.index = self._control.index()
        targets = {
            name: self._versions_wanted(name)
            for name, body in self._wanted.items()
            if body.get("load") and name in self.table.index
        }
        with self.table.lock:
            for name, versions in targets.items():
                state = self.table.models.get(name)
                if not versions:
                    continue
                if (
                    state is None
                    or state.state in ("unloaded", "failed")
                    and state.wants_retry(versions)
                ):
                    self.table.start_load(name, versions)
                elif state.state == "ready":
                    self.table.sync_versions(state, versions)
            for name, state in list(self.table.models.items()):
                if name not in targets and state.state in ("ready", "evicted", "loading"):
                    if state.state == "loading":
                        continue  # unloaded once its load is done
                    if state.state == "evicted":
                        state.state = "unloaded"
                        continue
                    threading.Thread(target=self._unload, args=(name,), daemon=True).start()
            for name in [n for n in self._refusers if n in targets]:
                self._refusers.pop(name).stop()  # wanted again: its records wait for the load

    def _unload(self, name: str) -> None:
        """Unload a model no longer wanted; with ``repository.on_unload: fail``, answer its
        records with an error from then on."""
        self.table.unload(name, "unloaded")
        state = self.table.models.get(name)
        if self.config.repository.on_unload == "fail" and state is not None:
            with self.table.lock:
                if name not in self._refusers and state.state == "unloaded":
                    self._refusers[name] = Refuser(self.config, name, state.stream).start()

    def _wanted_versions(self, name: str) -> list[int] | None:
        """The versions model ``name`` should be loaded in; None when it is not wanted."""
        if not self._wanted.get(name, {}).get("load") or name not in self.table.index:
            return None
        return self._versions_wanted(name)

    def _recycle_check(self) -> None:
        """A process that holds far more than its models (the framework's memory after many
        unloads) leaves, so its runner starts a fresh one (processes, Spark, Ray)."""
        if self.leave_when_stuck and self.budget.oversized():
            log.warning(
                "worker %s holds %.0f MB, over twice params.memory_budget above what it started "
                "with: leaving to be started afresh",
                self.name,
                rss_bytes() / 2**20,
            )
            self.recycle = self.left_stuck = True

    def _versions_wanted(self, name: str) -> list[int]:
        from ..repository.settings import VersionPolicy

        entry = self.table.index.get(name, {})
        available = {int(v) for v in entry.get("versions", {})}
        asked = self._wanted.get(name, {}).get("versions")
        if asked:
            return sorted(set(asked) & available)
        policy = VersionPolicy.parse("versions", entry.get("policy", "latest"))
        return sorted(policy.select(available))

    # ------------------------------------------------------------------ execution

    def _slot(self) -> None:
        """One execution slot: run the next batch the scheduler picks, until it stops."""
        while (got := self.scheduler.next_batch()) is not None:
            lane, batch = got
            started = time.perf_counter()
            try:
                with self.table.lock:
                    state = self.table.models.get(lane.name)
                    worker = state.worker if state is not None else None
                if worker is None:
                    log.error("records of model %s had no worker: left pending", lane.name)
                    continue
                worker.serve_batch(batch)
            except Exception:
                log.exception("a batch of model %s failed outside the model", lane.name)
            finally:
                self.scheduler.done(lane, time.perf_counter() - started)

    def _left(self) -> bool:
        """A model's worker left a stuck call behind: the whole process must be replaced."""
        with self.table.lock:
            stuck = [m.name for m in self.table.models.values() if m.worker and m.worker.left_stuck]
        if stuck:
            self.left_stuck = True
            log.error("worker %s leaves: model %s is stuck in a call", self.name, stuck[0])
        return self.left_stuck

    # ------------------------------------------------------------------ reporting

    def _publish(self, *, force: bool = False, gone: bool = False) -> None:
        """This host's models' states, for ``zoo-serve models list`` and /metrics."""
        now = time.monotonic()
        with self.table.lock:
            states = {
                n: (m.state, list(m.versions), m.current) for n, m in self.table.models.items()
            }
        moved = states != self._published_states  # a load or an unload waits on this
        if self._redis is None or (not force and not moved and now - self._published < PUBLISH_S):
            return
        self._published, self._published_states = now, states
        key = keys.model_states(self.config.data.stream)
        try:
            if gone:
                self._redis.hdel(key, self.name)
                return
            with self.table.lock:
                body = {name: m.describe() for name, m in self.table.models.items()}
            body["_host"] = {"pid": os.getpid(), "ts": time.time(), "rss": rss_bytes()}
            self._redis.hset(key, self.name, json.dumps(body))
        except Exception as exc:
            log.debug("publishing model states failed: %s", exc)


def make_worker(config: Config, **kwargs: Any) -> Worker | ModelHost:
    """What a runner runs: a :class:`ModelHost` for a model repository, else a plain
    :class:`~.worker.Worker` of ``model.path``."""
    if config.model.repository:
        kwargs.pop("queue", None)
        kwargs.pop("model", None)
        return ModelHost(config, **kwargs)
    return Worker(config, **kwargs)
