"""The ``processes`` runner: ``params.workers`` worker processes, one model each, supervised."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..config import Config, load_config
from ..errors import ServerError, ZooServingError
from ..serving.remote import (
    EXIT_STUCK,
    leave_stuck_process,
    package_log_level,
    picklable_error,
    setup_worker_logging,
    shipped_config,
)
from .base import Runner

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that lived this long restarts without the backoff it had
POLL_S = 0.05


@dataclass
class _Slot:
    """One worker position: the process filling it now and what it reported."""

    index: int
    process: Any = None  # multiprocessing.Process (spawn context)
    conn: Connection | None = None
    started: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    error: BaseException | None = None
    restart_at: float | None = None  # when a dead worker gets its replacement
    backoff_s: float = BACKOFF_FIRST_S
    done: bool = False  # ended for good (a clean exit, or stopped)


class ProcessesRunner(Runner):
    """``params.workers`` worker processes (``multiprocessing`` spawn), each running the same
    :class:`~zoo_serving.Worker` loop as every runner, in one consumer group.

    Each process uses ``params.threads`` framework threads; when that is 0, this machine's
    cores divided between the workers (``max(1, cpu_count // workers)``).

    A supervisor thread restarts a worker that dies (a non-zero exit code, or killed by a
    signal) with an exponential backoff, and logs it. A worker stuck in a batch past
    ``params.batch_timeout_s`` exits (code :data:`EXIT_STUCK`) and is replaced the same way.
    The dead worker's pending records are taken over by the live workers once they have been
    idle ``params.claim_idle_ms`` (the replacement has a new consumer name), and run one at a
    time. A worker that fails to load its model at start-up is not restarted:
    :meth:`raise_if_failed` re-raises its error in the caller, so
    :meth:`zoo_serving.Server.start` fails with the real reason.

    :meth:`stop` sends SIGTERM (each worker stops reading, serves and acknowledges what it
    read, and exits), waits up to the timeout, then kills what is left. A worker that exits 0
    on its own (a stop request through the control key) is not restarted.
    """

    name = "processes"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.RLock()  # the supervisor stops everything while holding it
        self._shipped: dict[str, Any] = {}  # the config each worker process rebuilds
        self.restarts = 0  # workers replaced after they died

    # ------------------------------------------------------------------ Runner steps

    def _start(self) -> None:
        self._stopping.clear()
        self._shipped = shipped_config(self.config)
        self.restarts = 0
        self._slots = [_Slot(i) for i in range(self.workers)]
        for slot in self._slots:
            self._spawn(slot)
        self._supervisor = threading.Thread(
            target=self._supervise, name="zoo-serving-supervisor", daemon=True
        )
        self._supervisor.start()

    def _stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for slot in self._slots:
                slot.restart_at = None
                if slot.process is not None and slot.process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid, signal.SIGTERM)

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """SIGTERM every worker, let them drain for up to ``timeout_s``, then kill the rest."""
        try:
            super().stop(timeout_s)
        finally:
            self._stopping.set()
            for slot in self._slots:
                proc = slot.process
                if proc is not None and proc.is_alive():
                    log.warning(
                        "worker process %d (pid %d) still running after %ss; killing it",
                        slot.index,
                        proc.pid,
                        timeout_s,
                    )
                    proc.kill()
                    proc.join(5)
            if self._supervisor is not None:
                self._supervisor.join(5)
                self._supervisor = None
            for slot in self._slots:
                self._close(slot)

    def join(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _alive(self) -> bool:
        with self._lock:
            return any(
                (s.process is not None and s.process.is_alive()) or s.restart_at is not None
                for s in self._slots
            )

    def _ready_count(self) -> int:
        with self._lock:
            self._read_reports()
            return sum(1 for s in self._slots if s.ready and s.process.is_alive())

    def raise_if_failed(self) -> None:
        for slot in self._slots:
            if slot.error is not None and not slot.ever_ready:
                raise slot.error

    # ------------------------------------------------------------------ introspection

    @property
    def pids(self) -> list[int]:
        """Process ids of the live worker processes."""
        with self._lock:
            return [
                s.process.pid for s in self._slots if s.process is not None and s.process.is_alive()
            ]

    # ------------------------------------------------------------------ supervision

    def _spawn(self, slot: _Slot) -> None:
        self._close(slot)
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main,
            args=(self._shipped, slot.index, writer, package_log_level(), self.server_id),
            name=f"zoo-serving-worker-{slot.index}",
            daemon=True,
        )
        proc.start()
        writer.close()  # the child holds the only writer: EOF tells us it is gone
        slot.process, slot.conn = proc, reader
        slot.started = time.monotonic()
        slot.ready = False
        slot.restart_at = None
        log.info("worker process %d started (pid %d)", slot.index, proc.pid)

    def _supervise(self) -> None:
        while True:
            with self._lock:
                self._read_reports()
                for slot in self._slots:
                    self._check(slot)
                busy = any(not s.done for s in self._slots)
            if self._stopping.is_set() and not busy:
                return
            self._stopping.wait(POLL_S)

    def _check(self, slot: _Slot) -> None:
        now = time.monotonic()
        if slot.done:
            return
        if slot.restart_at is not None:
            if self._stopping.is_set():
                slot.restart_at, slot.done = None, True
            elif now >= slot.restart_at:
                self.restarts += 1
                self._spawn(slot)
            return
        proc = slot.process
        if proc.is_alive():
            return
        proc.join()
        self._read_reports()  # what it said just before it ended
        slot.ready = False
        code = proc.exitcode
        if code == 0 or self._stopping.is_set():
            slot.done = True
            log.info("worker process %d (pid %d) exited with code %s", slot.index, proc.pid, code)
            return
        if not slot.ever_ready:
            slot.error = slot.error or ServerError(
                f"worker process {slot.index} (pid {proc.pid}) exited with code {code} before "
                "its model was ready; see the error log"
            )
            slot.done = True
            self._stopping.set()  # a worker that cannot start takes the others down
            self._stop()
            return
        if now - slot.started >= HEALTHY_AFTER_S:
            slot.backoff_s = BACKOFF_FIRST_S
        if code == EXIT_STUCK:
            limit = self.config.params.batch_timeout_s
            why = f"stuck in a batch past params.batch_timeout_s={limit:g}"
        else:
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.warning(
            "worker process %d (pid %d) died (%s); restarting it in %.1fs; its pending records "
            "go to the other workers after params.claim_idle_ms=%d, one at a time",
            slot.index,
            proc.pid,
            why,
            slot.backoff_s,
            self.config.params.claim_idle_ms,
        )
        slot.restart_at = now + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, BACKOFF_MAX_S)

    def _read_reports(self) -> None:
        for slot in self._slots:
            conn = slot.conn
            try:
                while conn is not None and conn.poll():
                    kind, value = conn.recv()
                    if kind == "ready":
                        slot.ready = slot.ever_ready = True
                    elif kind == "failed":
                        slot.error = value
                    elif kind == "ended" and self.metrics is not None:
                        self.metrics.worker_ended(*value)  # its counts, the drain's included
            except (EOFError, OSError):
                self._close(slot)

    @staticmethod
    def _close(slot: _Slot) -> None:
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None


# ---------------------------------------------------------------------- the worker process


def worker_main(
    raw_config: dict[str, Any], index: int, conn: Connection, level: int, server_id: str = ""
) -> None:
    """Entry point of a worker process: load, report ready (or the error), serve until
    SIGTERM/SIGINT or a stop request, drain, report its final counts, exit 0. Exits 1 when
    the model does not load."""
    from ..serving.host import make_worker

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = load_config(raw_config)
    setup_worker_logging(config, level, f"worker-{index}[{os.getpid()}]", error_log=True)
    threading.Thread(target=_watch_parent, args=(stop,), daemon=True).start()
    worker = make_worker(config, leave_when_stuck=True, server_id=server_id)
    try:
        worker.load()
    except BaseException as exc:
        if isinstance(exc, ZooServingError):  # says what is wrong: no traceback
            log.error("worker process %d failed to start: %s", index, exc)
        else:
            log.exception("worker process %d failed to start", index)
        with contextlib.suppress(OSError):
            conn.send(("failed", picklable_error(exc)))
        worker.close()
        raise SystemExit(1) from None
    try:
        conn.send(("ready", worker.name))
        worker.run(stop)
    finally:
        with contextlib.suppress(OSError):
            conn.send(("ended", (worker.name, worker.published_by_model())))
        worker.close()
        conn.close()
    if worker.left_stuck:  # the supervisor starts a new worker in its place
        leave_stuck_process()


def _watch_parent(stop: threading.Event) -> None:
    """Drain and exit when the server process is gone (the worker would be an orphan)."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("server process %d is gone; draining and stopping", parent)
            stop.set()
