"""Where an open loop's results come back: its inbox (native protocol 3), read by a listener
thread with a blocking read no timeout ends (Redis ends a blocking read's timeout only at its
next ``hz`` tick, 100 ms by default, too late for a loop that must send on schedule)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from ..client.replies import WAKE


class InboxReader:
    """A thread that takes an open loop's results from its inbox as they land, noting when
    each read returned, so the loop can wait for them with a timeout Python keeps."""

    def __init__(self, db: Any, key: bytes) -> None:
        self.db = db
        self.key = key
        self._got: queue.SimpleQueue[tuple[float, list[bytes]] | BaseException] = (
            queue.SimpleQueue()
        )
        self._stop = False
        self._thread = threading.Thread(target=self._listen, name="zoo-bench-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, timeout_s: float) -> tuple[float, list[bytes]] | None:
        """What the listener received, waiting at most ``timeout_s`` for a first read (all
        reads waiting are merged); None if nothing came."""
        try:
            first = self._got.get(timeout=timeout_s) if timeout_s > 0 else self._got.get_nowait()
        except queue.Empty:
            return None
        reads = [first]
        while True:
            try:
                reads.append(self._got.get_nowait())
            except queue.Empty:
                break
        taken: list[tuple[float, list[bytes]]] = []
        for read in reads:
            if isinstance(read, BaseException):
                raise read
            taken.append(read)
        return taken[-1][0], [b for _, blobs in taken for b in blobs]

    def stop(self, db: Any) -> None:
        """End the listener: an empty entry wakes its blocking read."""
        self._stop = True
        if self._thread.is_alive():
            try:
                db.rpush(self.key, WAKE)
                db.pexpire(self.key, 60_000)
            except Exception:  # Redis away: the read ends with its connection
                pass
            self._thread.join(5)
        if not self._thread.is_alive():
            db.delete(self.key)  # late results and the wake-up
        self.db.close()

    def _listen(self) -> None:
        try:
            while not self._stop:
                first = self.db.blpop([self.key], timeout=0)
                at = time.monotonic()
                blobs = [first[1], *(self.db.lpop(self.key, 1024) or [])]
                blobs = [b for b in blobs if b != WAKE]
                if blobs:
                    self._got.put((at, blobs))
        except BaseException as exc:  # the loop raises it
            if not self._stop:
                self._got.put(exc)
