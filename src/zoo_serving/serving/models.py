"""What a :class:`~.host.ModelHost` knows of each model it serves, and the config each model's
worker runs with."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from .worker import Worker

STATES = ("loading", "ready", "failed", "evicted", "unloaded")


def slot_count(config: Config) -> int:
    """Execution slots of a worker process: ``params.slots``, else one per core."""
    return config.params.slots or os.cpu_count() or 1


def model_config(base: Config, entry: dict[str, Any], version: int, slots: int) -> Config:
    """The config model ``entry`` (an index entry) runs with, version ``version`` first: the
    server's, with the model's stream, path and per-model settings. Framework threads:
    the model's ``threads``, else the cores shared out between the slots, so threads summed
    over the batches running at once stay within the cores."""
    s = entry["settings"]
    cores = os.cpu_count() or 1
    threads = int(s.get("threads") or 0) or max(1, cores // max(slots, 1))
    return base.replace(
        **{
            "model.path": entry["versions"][str(version)]["path"],
            "model.repository": None,
            "model.backend": s.get("backend"),
            "model.signature": s.get("signature") or base.model.signature,
            "data.stream": entry["stream"],
            "data.shape": s.get("shape") or base.data.shape,
            "data.max_queue_len": s.get("max_queue_len", base.data.max_queue_len),
            "params.batch_size": s.get("batch_size", base.params.batch_size),
            "params.top_n": s.get("top_n", base.params.top_n),
            "params.max_wait_ms": s.get("max_wait_ms", base.params.max_wait_ms),
            "params.engine_type": s.get("engine_type", base.params.engine_type),
            "params.batch_timeout_s": s.get("batch_timeout_s") or base.params.batch_timeout_s,
            "params.threads": threads,
        }
    )


def rss_bytes() -> int:
    """This process's resident memory, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(eq=False)
class ModelState:
    """One model in one worker process: its state, its worker, and what it costs."""

    name: str
    stream: str
    state: str = "loading"  # one of STATES
    worker: Worker | None = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] | None = None
    wanted: list[int] = field(default_factory=list)
    retiring: set[int] = field(default_factory=set)
    failed_versions: set[int] = field(default_factory=set)
    memory: int = 0  # bytes it took to load (resident memory before and after)
    estimate: int = 0  # model.yaml's memory, used until it was measured
    load_s: float = 0.0
    loads: int = 0
    evictions: int = 0
    pinned: bool = False
    weight: float = 1.0
    error: str | None = None
    error_obj: BaseException | None = None
    last_used: float = field(default_factory=time.monotonic)
    _seen: int = 0

    @property
    def current(self) -> int | None:
        return self.worker.versions.current if self.worker is not None else None

    @property
    def versions(self) -> list[int]:
        return self.worker.versions.numbers() if self.worker is not None else []

    @property
    def cost(self) -> int:
        """Memory counted against the budget: as measured, at least the model's estimate."""
        return max(self.memory, self.estimate)

    def wants_retry(self, versions: list[int]) -> bool:
        """A failed or unloaded model loads again, unless it is the same versions that failed."""
        return self.state == "unloaded" or not set(versions) <= self.failed_versions

    def touch(self) -> None:
        """Note use: records answered since the last look make it recently used."""
        if self.worker is None:
            return
        done = self.worker.stats.succeeded + self.worker.stats.failed
        if done != self._seen:
            self._seen = done
            self.last_used = time.monotonic()

    def describe(self) -> dict[str, Any]:
        """The state as published for ``zoo-serve models list`` and /metrics."""
        return {
            "state": self.state,
            "stream": self.stream,
            "versions": self.versions,
            "current": self.current,
            "memory": self.memory,
            "load_s": round(self.load_s, 3),
            "loads": self.loads,
            "evictions": self.evictions,
            "pinned": self.pinned,
            "error": self.error,
        }
