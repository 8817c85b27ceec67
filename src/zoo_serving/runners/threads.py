"""The ``threads`` runner: workers in threads of this process (one model each)."""

from __future__ import annotations

import logging
import threading
import time

from ..config import Config
from ..errors import ZooServingError
from ..observe.stats import WorkerStats
from ..serving.host import ModelHost, make_worker
from ..serving.remote import worker_threads
from ..serving.worker import Worker
from .base import Runner

log = logging.getLogger(__name__)


class ThreadsRunner(Runner):
    """``params.workers`` workers, each a thread running :meth:`Worker.run` (which itself
    overlaps reading, inference and writing in threads).

    With ``params.threads: 0`` the cores are divided between the workers' frameworks, as
    the other runners do: two sessions that each take every core only fight over them.
    """

    name = "threads"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[Worker | ModelHost] = []
        self._errors: list[BaseException] = []

    def _start(self) -> None:
        self._stop_event.clear()
        config = self.config
        if self.workers > 1:  # one worker keeps its framework's own default
            config = config.replace(**{"params.threads": worker_threads(config)})
        for _ in range(self.workers):
            worker = make_worker(config, metrics=self.metrics, server_id=self.server_id)
            self._workers.append(worker)
            thread = threading.Thread(
                target=self._run, args=(worker,), name=worker.name, daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: Worker | ModelHost) -> None:
        try:
            worker.load()
            worker.run(self._stop_event)
        except BaseException as exc:  # surfaced to the caller by raise_if_failed
            if isinstance(exc, ZooServingError):  # says what is wrong: no traceback
                log.error("worker %s failed: %s", worker.name, exc)
            else:
                log.exception("worker %s failed", worker.name)
            self._errors.append(exc)
            self._stop_event.set()
        finally:
            worker.close()

    def raise_if_failed(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _stop(self) -> None:
        self._stop_event.set()

    def join(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not self._alive()

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _ready_count(self) -> int:
        return sum(1 for w in self._workers if w.ready)

    @property
    def stats(self) -> list[WorkerStats]:
        """Per-worker :class:`WorkerStats`."""
        return [w.stats for w in self._workers]
