"""Where an open loop's results come back: its inbox (native protocol 3), one per partition of
the stream, each read by a listener thread with a blocking read no timeout ends (Redis ends a
blocking read's timeout only at its next ``hz`` tick, 100 ms by default, too late for a loop
that must send on schedule)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..client.replies import WAKE


class InboxReader:
    """Threads that take an open loop's results from its inboxes (``inbox_keys``: a key in
    each partition's slot) as they land, noting when each read returned, so the loop can wait
    for them with a timeout Python keeps. ``db`` is shared by the threads (a redis-py client
    is thread-safe; each blocking read holds a connection of its own)."""

    def __init__(self, db: Any, inbox_keys: Sequence[bytes]) -> None:
        self.db = db
        self.keys = list(inbox_keys)
        self._got: queue.SimpleQueue[tuple[float, list[bytes]] | BaseException] = (
            queue.SimpleQueue()
        )
        self._stop = False
        self._threads = [
            threading.Thread(target=self._listen, args=(key,), name="zoo-bench-inbox", daemon=True)
            for key in self.keys
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def take(self, timeout_s: float) -> list[tuple[float, bytes]]:
        """What the listeners received, each entry with when its read returned, waiting at
        most ``timeout_s`` for a first read; empty if nothing came."""
        try:
            first = self._got.get(timeout=timeout_s) if timeout_s > 0 else self._got.get_nowait()
        except queue.Empty:
            return []
        reads = [first]
        while True:
            try:
                reads.append(self._got.get_nowait())
            except queue.Empty:
                break
        out: list[tuple[float, bytes]] = []
        for read in reads:
            if isinstance(read, BaseException):
                raise read
            out.extend((read[0], blob) for blob in read[1])
        return out

    def stop(self, db: Any) -> None:
        """End the listeners: an empty entry wakes each blocking read."""
        self._stop = True
        for key, thread in zip(self.keys, self._threads):
            if thread.is_alive():
                try:
                    db.rpush(key, WAKE)
                    db.pexpire(key, 60_000)
                except Exception:  # Redis away: the read ends with its connection
                    pass
                thread.join(5)
            if not thread.is_alive():
                db.delete(key)  # late results and the wake-up
        self.db.close()

    def _listen(self, key: bytes) -> None:
        try:
            while not self._stop:
                first = self.db.blpop([key], timeout=0)
                at = time.monotonic()
                blobs = [first[1], *(self.db.lpop(key, 1024) or [])]
                blobs = [b for b in blobs if b != WAKE]
                if blobs:
                    self._got.put((at, blobs))
        except BaseException as exc:  # the loop raises it
            if not self._stop:
                self._got.put(exc)
