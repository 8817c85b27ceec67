"""Where the load jobs of ``zoo-serve bench`` run: one on a thread of this process, or
several in spawned processes (each with its own GIL), started together at one wall time."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import ServerError
from .driver import Driver, Job, Outcome, child_main

START_DELAY_S = 0.05  # between "go" and the first record, so every job starts together
SPAWN_TIMEOUT_S = 60.0  # longest a spawned load process may take to connect


class Threads:
    """One job on a thread of this process (no start-up cost)."""

    def __init__(self, jobs: list[Job]) -> None:
        self._drivers = [Driver(job, _Count()) for job in jobs]
        self._results: list[Outcome | BaseException] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> float:
        for driver in self._drivers:
            driver.prepare()
        start_at = time.time() + START_DELAY_S
        for driver in self._drivers:
            thread = threading.Thread(
                target=self._run, args=(driver, start_at), name="zoo-bench", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return start_at

    def _run(self, driver: Driver, start_at: float) -> None:
        try:
            self._results.append(driver.run(start_at))
        except BaseException as exc:
            self._results.append(exc)

    def wait(self, timeout_s: float) -> bool:
        for thread in self._threads:
            thread.join(timeout_s)
        return not any(t.is_alive() for t in self._threads)

    def answered(self) -> int:
        return sum(int(d.progress.value) for d in self._drivers)

    def outcomes(self) -> list[Outcome]:
        return raise_or(self._results)

    def stop(self) -> None:
        for driver in self._drivers:
            driver.close()


class _Count:
    value = 0


class Processes:
    """Jobs in spawned processes (each its own GIL), started together by wall time."""

    def __init__(self, jobs: list[Job]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._counts = [ctx.Value("q", 0, lock=False) for _ in jobs]
        self._conns = []
        self._procs = []
        for job, count in zip(jobs, self._counts):
            conn, child = ctx.Pipe()
            proc = ctx.Process(
                target=child_main, args=(child, job, count), name="zoo-bench", daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(conn)
            self._procs.append(proc)
        self._results: dict[int, Outcome | BaseException] = {}

    def start(self) -> float:
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        for i, conn in enumerate(self._conns):
            kind, value = self._recv(i, conn, max(deadline - time.monotonic(), 0.0))
            if kind != "ready":
                self._results[i] = value
                raise_or(list(self._results.values()))
        start_at = time.time() + START_DELAY_S
        for conn in self._conns:
            conn.send(start_at)
        return start_at

    def _recv(self, i: int, conn: Any, timeout_s: float) -> tuple[str, Any]:
        if not conn.poll(timeout_s):
            raise ServerError(f"bench process {i} did not start within {SPAWN_TIMEOUT_S}s")
        try:
            return conn.recv()
        except EOFError:
            code = self._procs[i].exitcode
            raise ServerError(f"bench process {i} died (exit code {code})") from None

    def wait(self, timeout_s: float) -> bool:
        from multiprocessing.connection import wait

        waiting = [c for i, c in enumerate(self._conns) if i not in self._results]
        ready = wait(waiting, timeout_s)
        for i, conn in enumerate(self._conns):
            if conn in ready:
                self._results[i] = self._recv(i, conn, 0.0)[1]
        return len(self._results) == len(self._conns)

    def answered(self) -> int:
        return sum(int(c.value) for c in self._counts)

    def outcomes(self) -> list[Outcome]:
        return raise_or([self._results[i] for i in sorted(self._results)])

    def stop(self) -> None:
        """Close the pipes; a process still loading (the run was cut short) is killed."""
        for conn in self._conns:
            conn.close()
        for i, proc in enumerate(self._procs):
            proc.join(5.0 if i in self._results else 0.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def raise_or(results: list[Any]) -> list[Outcome]:
    """The outcomes, unless a job failed: then its error."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
