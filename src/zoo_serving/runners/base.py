"""The Runner interface: where and how many workers run."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from ..config import Config
from ..observe.metrics import Metrics

log = logging.getLogger(__name__)


class Runner(ABC):
    """Runs workers of one config and stops them.

    Subclasses decide where workers live (:meth:`_start`, :meth:`_stop`, :meth:`_alive`,
    :meth:`_ready_count`); the template methods here add waiting and timeouts.
    """

    #: runner name, as in ``params.runner``
    name: str = ""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics: Metrics | None = None  # the server's sink: in-process workers register
        # with it; workers elsewhere name the server in their heartbeats and their final counts
        # are handed to it when they end
        self.server_id = ""  # the server whose runner this is ("" without one)
        self._started = False

    def start(self) -> None:
        """Start the workers; returns at once (see :meth:`wait_ready`)."""
        if self._started:
            return
        self._start()
        self._started = True

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """Ask workers to stop, let them finish what they read, wait up to ``timeout_s``."""
        if not self._started:
            return
        self._stop()
        self.join(timeout_s)
        self._started = False

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every worker has its model loaded and warmed up, or a worker died."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._ready_count() < self.workers:
            self.raise_if_failed()
            if not self._alive():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def raise_if_failed(self) -> None:  # noqa: B027 - optional hook
        """Re-raise a worker's start-up failure (bad model, Redis down) in the caller."""

    @property
    def workers(self) -> int:
        """How many workers this runner runs."""
        return self.config.params.workers

    @property
    def alive(self) -> bool:
        return self._started and self._alive()

    @abstractmethod
    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the workers to end; True when they did."""

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    @abstractmethod
    def _alive(self) -> bool: ...

    @abstractmethod
    def _ready_count(self) -> int: ...
