"""The models of a :class:`~.host.ModelHost` and their workers: loading a model (its worker
on its own stream, feeding the shared slots), loading new versions beside the served ones and
switching to the newest, retiring old versions once nothing runs on them, and unloading (the
worker stops reading and drains)."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Config
from ..observe.metrics import Metrics
from ..observe.stats import WorkerStats
from .models import ModelState, model_config, rss_bytes
from .scheduler import Scheduler
from .worker import Worker

log = logging.getLogger("zoo_serving.worker")


class ModelTable:
    """Every model one worker process knows, by name, and the work of loading and unloading.

    Args:
        config: the server's config.
        slots: the process's execution slots (framework threads are shared out by them).
        scheduler: the slots' scheduler, which every model's worker feeds.
        metrics: the server's metrics sink.
        leave_when_stuck: handed to every model's worker.
        name: the host's consumer name, every model's worker's too (one per model stream), so
            a runner that counts its workers by name (Spark's job id) finds them.
        before_load: called with a model about to load (makes room under the memory budget).
    """

    def __init__(
        self,
        config: Config,
        slots: int,
        scheduler: Scheduler,
        metrics: Metrics,
        leave_when_stuck: bool,
        before_load: Callable[[ModelState], None] | None = None,
        name: str | None = None,
        server_id: str = "",
    ) -> None:
        self.config = config
        self.name = name
        self.server_id = server_id
        self.slots = slots
        self.scheduler = scheduler
        self.metrics = metrics
        self.leave_when_stuck = leave_when_stuck
        self.before_load = before_load
        self.models: dict[str, ModelState] = {}
        self.index: dict[str, dict[str, Any]] = {}  # the model index, as last read
        self.lock = threading.RLock()
        # what each model's workers that stopped did
        self.finished: defaultdict[str, WorkerStats] = defaultdict(WorkerStats)
        self._loads = ThreadPoolExecutor(config.params.max_loads, thread_name_prefix="load")

    def shutdown(self) -> None:
        self._loads.shutdown(wait=False, cancel_futures=True)

    def start_load(self, name: str, versions: list[int]) -> None:
        """Load ``name`` in the background (at most ``params.max_loads`` at a time)."""
        entry = self.index[name]
        settings = entry.get("settings", {})
        old = self.models.get(name)
        state = ModelState(name, entry["stream"], wanted=list(versions))
        if old is not None:
            state.memory, state.loads, state.evictions = old.memory, old.loads, old.evictions
            state.failed_versions = old.failed_versions
        state.estimate = int(settings.get("memory") or 0)
        state.pinned = bool(settings.get("pinned"))
        state.weight = float(settings.get("weight") or 1.0)
        self.models[name] = state
        state.future = self._loads.submit(self._load, state)

    def _load(self, state: ModelState) -> None:
        versions = sorted(state.wanted)
        entry = self.index[state.name]
        try:
            if self.before_load is not None:
                self.before_load(state)
            first = versions[-1]  # the newest serves first; older wanted ones load beside it
            cfg = model_config(self.config, entry, first, self.slots)
            before, started = rss_bytes(), time.monotonic()
            worker = Worker(
                cfg,
                name=self.name,
                server_id=self.server_id,
                model_name=state.name,
                version=first,
                executor=self.scheduler,
                metrics=self.metrics,
                leave_when_stuck=self.leave_when_stuck,
                weight=state.weight,
            )
            try:
                worker.load()
                for number in versions[:-1]:
                    worker.versions.load(number, entry["versions"][str(number)]["path"])
            except BaseException:
                worker.close()
                raise
            state.load_s = time.monotonic() - started
            state.memory = max(rss_bytes() - before, state.memory if state.loads else 0)
        except Exception as exc:
            log.error("model %s could not load: %s", state.name, exc)
            with self.lock:
                state.state, state.error, state.error_obj = "failed", str(exc), exc
                state.failed_versions = set(versions)
            return
        with self.lock:
            state.worker, state.loads, state.error = worker, state.loads + 1, None
            state.thread = threading.Thread(
                target=self._serve_model, args=(state,), name=f"model-{state.name}", daemon=True
            )
            state.state = "ready"
            state.last_used = time.monotonic()
            state.thread.start()
        log.info(
            "model %s loaded: versions %s in %.2fs, %.0f MB",
            state.name,
            versions,
            state.load_s,
            state.memory / 2**20,
        )

    def _serve_model(self, state: ModelState) -> None:
        assert state.worker is not None
        try:
            state.worker.run(state.stop)
        except Exception:
            log.exception("model %s: its worker failed", state.name)
            with self.lock:
                state.state, state.error = "failed", "its worker failed; see the error log"

    def wait_loads(self) -> None:
        with self.lock:
            futures = [m.future for m in self.models.values() if m.future is not None]
        for future in futures:
            future.result()

    def sync_versions(self, state: ModelState, versions: list[int]) -> None:
        """New wanted versions load beside the served ones and the newest becomes current;
        versions no longer wanted retire once nothing runs on them."""
        assert state.worker is not None
        loaded = set(state.worker.versions.numbers())
        new = [v for v in versions if v not in loaded and v not in state.failed_versions]
        state.wanted = list(versions)
        state.retiring = loaded - set(versions)
        if new and (state.future is None or state.future.done()):
            state.future = self._loads.submit(self._add_versions, state, new)
        elif (
            versions and max(versions) in loaded and state.worker.versions.current != max(versions)
        ):
            state.worker.switch(max(versions))

    def _add_versions(self, state: ModelState, new: list[int]) -> None:
        worker = state.worker
        assert worker is not None
        entry = self.index[state.name]
        for number in sorted(new):
            started = time.monotonic()
            try:
                worker.versions.load(number, entry["versions"][str(number)]["path"])
            except Exception as exc:  # the old version keeps serving, and says why
                log.error(
                    "model %s version %d could not load (version %s keeps serving): %s",
                    state.name,
                    number,
                    worker.versions.current,
                    exc,
                )
                with self.lock:
                    state.failed_versions.add(number)
                    state.error = f"version {number} failed to load: {exc}"
                continue
            log.info(
                "model %s version %d loaded in %.2fs",
                state.name,
                number,
                time.monotonic() - started,
            )
        wanted = [v for v in state.wanted if v in worker.versions]
        if wanted and max(wanted) != worker.versions.current:
            worker.switch(max(wanted))
            log.info("model %s serves version %d", state.name, max(wanted))

    def retire_versions(self) -> None:
        with self.lock:
            states = [m for m in self.models.values() if m.retiring and m.worker is not None]
        for state in states:
            worker = state.worker
            assert worker is not None
            for number in sorted(state.retiring):
                if self.scheduler.holds_version(state.name, number):
                    continue
                if worker.versions.retire(number):
                    state.retiring.discard(number)
                    log.info("model %s version %d retired", state.name, number)

    def unload(self, name: str, reason: str) -> None:
        """Stop model ``name``'s worker: it stops reading, runs and answers what it read,
        and frees the model. ``reason``: ``unloaded`` (no longer wanted), ``evicted`` (wanted,
        but its memory was needed; it loads again when records come) or ``stopping``."""
        with self.lock:
            state = self.models.get(name)
            if state is None or state.worker is None:
                return
            worker, thread = state.worker, state.thread
            state.state = "unloading"
        state.stop.set()
        if thread is not None:
            thread.join()
        with self.lock:
            self.finished[state.name].merge(worker.stats)
            state.worker, state.thread = None, None
            state.stop = threading.Event()
            state.state = "evicted" if reason == "evicted" else "unloaded"
            state.evictions += reason == "evicted"
        if not worker.left_stuck:
            worker.close()
        if reason != "stopping":
            log.info("model %s %s", name, reason)
