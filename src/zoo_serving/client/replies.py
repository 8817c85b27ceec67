"""A client's inbox (native protocol 3): the workers append the results of its ``predict``
records to one list, ``keys.inbox(stream, inbox id)``, each as ``<token>\\n<result>``, and one
listener takes all that are there with one blocking call (``BLMPOP ... COUNT``) and hands each
to the call waiting for its token.

So a client with many records in flight, from many threads, waits on one connection with one
blocking read, instead of a blocking pop per call. :class:`Inbox` is the threads' listener
(a daemon thread, started on the first wait and leaving after :data:`IDLE_EXIT_S` without
waiters); the asyncio client has its own task (:mod:`.aio`), sharing :func:`split_entry`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from typing import Any

from .. import keys
from .adding import Tokens

log = logging.getLogger(__name__)

TAKE = 512  # results taken in one read at most
POLL_S = 1.0  # longest one blocking read lasts
IDLE_EXIT_S = 5.0  # a listener with nobody waiting this long leaves (the next wait restarts it)
WAKE = b"\n"  # an entry with an empty token: wakes the listener (to stop), carries nothing


def new_inbox_id() -> str:
    """An inbox id of this process: 32 hex digits, unguessable."""
    return uuid.uuid4().hex


def split_entry(blob: bytes) -> tuple[bytes, bytes]:
    """An inbox entry's token and result."""
    token, _, result = blob.partition(b"\n")
    return token, result


class Waiting:
    """The results one call waits for: a slot per token, filled by the listener."""

    def __init__(self, tokens: list[bytes]) -> None:
        self.tokens = tokens
        self.blobs: list[bytes | None] = [None] * len(tokens)
        self.left = len(tokens)
        self.done = threading.Event()


class AsyncWaiting:
    """The results one asyncio call awaits: a slot per token; ``done`` resolves when all are in, or
    at the call's timeout (the missing ones left None)."""

    def __init__(self, tokens: list[bytes], done: asyncio.Future[None]) -> None:
        self.blobs: list[bytes | None] = [None] * len(tokens)
        self.left = len(tokens)
        self.done = done

    def fill(self, i: int, blob: bytes) -> None:
        self.blobs[i] = blob
        self.left -= 1
        if self.left == 0:
            self.expire()

    def expire(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Inbox:
    """The inbox of one client (one :class:`InputQueue` in one process) on one stream.

    Args:
        db: the client's redis-py client; the listener holds one of its pool's connections
            while it runs.
        stream: the input stream.
    """

    def __init__(self, db: Any, stream: str) -> None:
        self.db = db
        self.stream = stream
        self._lock = threading.Lock()
        self._pid = -1
        self.id = ""
        self.key = b""
        self.tokens = Tokens()
        self._waiting: dict[bytes, tuple[Waiting, int]] = {}
        self._running = False
        self.thread: threading.Thread | None = None  # the listener, while it runs
        self._closed = False
        self._blmpop = True  # else Redis < 7: BLPOP, then LPOP with a count

    def current_id(self) -> str:
        """This process's inbox id (a forked child gets its own: the listener is not
        inherited)."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self.id = os.getpid(), new_inbox_id()
                self.tokens = Tokens()
                self.key = keys.inbox(self.stream, self.id)
                self._waiting, self._running = {}, False
            return self.id

    def expect(self, tokens: list[bytes]) -> Waiting:
        """Register the tokens of records about to be sent (before sending: a result may
        come back at once); wait with :meth:`wait`."""
        self.current_id()
        waiting = Waiting(tokens)
        with self._lock:
            for i, token in enumerate(tokens):
                self._waiting[token] = (waiting, i)
            if not self._running:
                self._running = True
                self.thread = threading.Thread(
                    target=self._listen, name=f"zoo-inbox-{self.id[:8]}", daemon=True
                )
                self.thread.start()
        return waiting

    def wait(self, waiting: Waiting, timeout: float) -> list[bytes | None]:
        """The results' bytes by token order, None where none came within ``timeout``."""
        waiting.done.wait(max(timeout, 0.0))
        self.forget(waiting)
        return waiting.blobs

    def forget(self, waiting: Waiting) -> None:
        """Stop waiting for ``waiting``'s tokens (a result arriving later is dropped)."""
        with self._lock:
            for token in waiting.tokens:
                self._waiting.pop(token, None)

    def close(self) -> None:
        """Stop the listener: wake it with an empty entry if it is blocked."""
        with self._lock:
            self._closed = True
            running = self._running and self._pid == os.getpid()
        if running:
            try:
                pipe = self.db.pipeline(transaction=False)
                pipe.rpush(self.key, WAKE)
                pipe.pexpire(self.key, 60_000)
                pipe.execute()
            except Exception as exc:  # Redis away: the listener leaves after its poll
                log.debug("waking the inbox listener failed: %s", exc)

    # ---------------------------------------------------------------- the listener

    def _listen(self) -> None:
        idle_since = time.monotonic()
        backoff = 0.05
        while True:
            with self._lock:
                if self._waiting:
                    idle_since = time.monotonic()
                elif self._closed or time.monotonic() - idle_since > IDLE_EXIT_S:
                    self._running = False
                    return
            try:
                blobs = self._take()
                backoff = 0.05
            except Exception as exc:  # Redis away: callers time out, or it comes back
                log.warning("inbox %s: read failed: %s; retrying", self.id, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if blobs:
                self._deliver(blobs)

    def _take(self) -> list[bytes]:
        import redis

        if self._blmpop:
            try:
                reply = self.db.blmpop(POLL_S, 1, self.key, direction="LEFT", count=TAKE)
                return reply[1] if reply else []
            except redis.exceptions.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._blmpop = False
        first = self.db.blpop([self.key], timeout=POLL_S)
        if first is None:
            return []
        more = self.db.lpop(self.key, TAKE - 1) or []
        return [first[1], *more]

    def _deliver(self, blobs: list[bytes]) -> None:
        with self._lock:
            for blob in blobs:
                token, result = split_entry(blob)
                found = self._waiting.pop(token, None)
                if found is None:
                    continue  # the wake-up, or a call that gave up waiting
                waiting, i = found
                waiting.blobs[i] = result
                waiting.left -= 1
                if waiting.left == 0:
                    waiting.done.set()
