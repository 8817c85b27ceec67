"""The load loop behind ``zoo-serve bench``: one thread keeps many records in flight.

A :class:`Driver` sends records with pipelined ``XADD`` s and takes results with pipelined
``LPOP`` s on the result keys of the oldest records in flight, blocking (``BLPOP``) on them
only when a round trip brought nothing back; each round trip carries both the new records and
the result look-ups. Results come back roughly in the order records went out, so only the
oldest keys are looked at: about as many as the last round found done, plus a margin.

Closed loop: ``clients`` records in flight; each result that comes back sends the next record.
Open loop: records go out on a schedule (``rate`` per second, checked every round, at least
every millisecond), and a record's latency counts from when it was *due*, so a client that
fell behind its schedule, or a server that made it wait, shows in the latency (no coordinated
omission). Its results come back through an inbox (native protocol 3) that a listener thread
reads with a blocking read that no timeout has to end: Redis ends a blocking read's timeout
only at its next ``hz`` tick (100 ms by default), so a loop that blocked for "the 6 ms until the
next record is due" would send that record up to 94 ms late whenever no result woke it.

Every record carries a deadline (``timeout_s`` after it was sent): a server that fell far
behind answers the stale ones with ``deadline_exceeded`` without running them, so a backlog
left by one load level does not spill into the next.
"""

from __future__ import annotations

import math
import time
import traceback
import uuid
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from .. import keys
from ..config import DataConfig
from ..errors import BrokerConnectionError, ServerError, ZooServingError
from ..wire import native as protocol
from .inbox import InboxReader

WINDOW = 128  # most result keys looked at in one round trip
MARGIN = 16  # keys looked at past the newest result the last round found
MAX_SENDS = 512  # most records added in one round trip
TICK_S = 0.001  # longest an open loop's due record waits for the loop
POLL_S = 0.1  # longest a blocking wait lasts, so phases and progress move on
DRAIN_GRACE_S = 1.0  # how long past their deadline records have to come back (as expired)


@dataclass(frozen=True, kw_only=True)
class Job:
    """What one load-generating thread or process does; crosses to spawned processes.

    ``clients`` (closed loop) or ``rate`` (open loop, records/s, starting ``offset_s`` into the
    run so that jobs interleave) says how much load; ``warmup_s`` of it first goes unmeasured;
    then it is measured for ``duration_s`` or until ``records`` were sent, whichever is first.
    """

    data: DataConfig
    url: str | None
    stream: str
    inputs: tuple[Mapping[str, Any], ...]
    mode: str  # "closed" or "open"
    clients: int = 0
    rate: float = 0.0
    offset_s: float = 0.0
    warmup_s: float = 0.0
    duration_s: float | None = None
    records: int | None = None
    timeout_s: float = 10.0
    keep: int = 0
    first_input: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])


@dataclass
class Outcome:
    """What one job measured; times are seconds from the start of the measured window."""

    latencies_s: np.ndarray  # of the measured records that were answered
    sent: int = 0
    answered: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    in_window: int = 0  # results of any record received inside the measured window
    last_send_s: float = 0.0
    last_answer_s: float = 0.0
    busy: float = 0.0  # fraction of a core the loop used while measured
    samples: list[tuple[int, Any]] = field(default_factory=list)


class Driver:
    """Runs one :class:`Job` on one thread: ``prepare()`` connects, ``run(start_at)`` loads.

    ``progress``: anything with an int ``value``, set to the measured records answered so far
    (a ``multiprocessing.Value`` when the driver runs in another process).
    """

    def __init__(self, job: Job, progress: Any = None) -> None:
        self.job = job
        self.progress = progress
        self.db: Any = None
        self._fields: list[dict[bytes, bytes]] = []
        self._flight: dict[bytes, tuple[float, int, bool]] = {}  # key -> sent at, input, measured
        self._reach = MARGIN
        self._seq = 0
        self._owed = 0  # closed loop: records to send in the next round
        self._latencies = array("d")
        self._out = Outcome(np.empty(0))
        self._measured_sent = 0
        self._stopped_at = math.inf  # when the last record was sent
        self._inbox: InboxReader | None = None  # open loop: where the results come back
        self._partitions = 1  # of the stream, as its server published them
        self._cluster = False  # a Redis Cluster: a blocking read's keys must share a slot

    def prepare(self) -> Driver:
        """Connect, and encode every input once (a record's uri and deadline change per send)."""
        from ..broker.connection import connect, is_cluster
        from ..broker.partitions import published_partitions

        job = self.job
        self.db = connect(job.data, url=job.url, socket_timeout=None, socket_connect_timeout=5.0)
        self._partitions = published_partitions(self.db, job.stream, job.data.partitions)
        self._cluster = is_cluster(self.db)
        self._fields = [protocol.encode_request(b"", dict(x)) for x in job.inputs]
        if job.mode == "open":
            inbox = f"bench-{job.tag}".encode()
            self._fields = [
                protocol.encode_request(b"", dict(x), reply_to=b"-", inbox=inbox)
                for x in job.inputs
            ]
            listen = connect(job.data, url=job.url, socket_timeout=None, socket_connect_timeout=5.0)
            parts = keys.partition_streams(job.stream, self._partitions)
            self._inbox = InboxReader(listen, [keys.inbox(part, inbox) for part in parts])
        return self

    def close(self) -> None:
        if self._inbox is not None:
            self._inbox.stop(self.db)
        if self.db is not None:
            self.db.close()

    # ------------------------------------------------------------------ the loop

    def run(self, start_at: float) -> Outcome:
        """Load from wall time ``start_at`` (shared by every job of a run) until done."""
        job = self.job
        self._t0 = time.monotonic() + (start_at - time.time())
        self._t_measure = self._t0 + job.warmup_s
        self._t_stop = self._t_measure + (
            job.duration_s if job.duration_s is not None else math.inf
        )
        self._next_due = self._t0 + job.offset_s  # open loop: when the next record is due
        self._owed = job.clients if job.mode == "closed" else 0
        time.sleep(max(self._t0 - time.monotonic(), 0.0))
        import redis

        try:
            if self._inbox is not None:
                self._inbox.start()
            return self._loop()
        except redis.exceptions.RedisError as exc:
            from ..broker.connection import redis_url, safe_url

            where = safe_url(job.url or redis_url(job.data))
            raise BrokerConnectionError(
                f"bench lost Redis at {where} while loading stream {job.stream}: {exc}",
                url=where,
            ) from None

    def _loop(self) -> Outcome:
        job = self.job
        busy = _Busy()
        while True:
            now = time.monotonic()
            busy.mark(now, now >= self._t_measure, self._stopped_at < math.inf)
            sends = self._due(now)
            if not sends and not self._flight:
                if self._sending(now):
                    time.sleep(min(max(self._next_due - now, 0.0), POLL_S))
                    continue
                break
            if self._round(sends) == 0 and self._flight:
                if now > self._stopped_at + job.timeout_s + DRAIN_GRACE_S:
                    break  # what is still out is missing
                self._block(now)
            if self.progress is not None:
                self.progress.value = self._out.answered
        busy.mark(time.monotonic(), True, True)
        return self._finish(busy.share())

    def _sending(self, now: float) -> bool:
        """Whether records still go out; notes when the last one did."""
        job = self.job
        if self._stopped_at < math.inf:
            return False
        # an open loop sends every record due in the window, late ones too
        before_stop = (self._next_due if job.mode == "open" else now) < self._t_stop
        if before_stop and (job.records is None or self._measured_sent < job.records):
            return True
        self._stopped_at = now
        return False

    def _due(self, now: float) -> list[tuple[float, bool]]:
        """The records to send now: (when each was due, whether it is measured); a closed
        loop's records are due when they go out."""
        if not self._sending(now):
            return []
        job = self.job
        measured = now >= self._t_measure
        if job.mode == "closed":
            count = min(self._owed, MAX_SENDS)
            if measured and job.records is not None:
                count = min(count, job.records - self._measured_sent)
            self._owed -= count
            return [(math.inf, measured)] * count  # timed from when they go out
        sends: list[tuple[float, bool]] = []
        while self._next_due <= now + TICK_S / 2 and len(sends) < MAX_SENDS:
            if self._next_due >= self._t_stop:
                self._stopped_at = now
                break
            sends.append((self._next_due, self._next_due >= self._t_measure))
            self._next_due += 1.0 / job.rate
        return sends

    def _round(self, sends: list[tuple[float, bool]]) -> int:
        """One round trip: add ``sends``, look for results of the oldest records in flight;
        returns how many results came back."""
        job = self.job
        pipe = self.db.pipeline(transaction=False)
        new = []
        deadline_ms = str(int((time.time() + job.timeout_s) * 1000)).encode()
        for due, measured in sends:
            index = (job.first_input + self._seq) % len(self._fields)
            uri = f"bench-{job.tag}-{self._seq}".encode()
            self._seq += 1
            fields = dict(self._fields[index])
            fields[protocol.F_URI] = uri
            fields[protocol.F_DEADLINE] = deadline_ms
            if self._inbox is not None:
                fields[protocol.F_REPLY_TO] = uri
            part = keys.partition_of(job.stream, uri, self._partitions)  # as clients pick it
            pipe.xadd(part, fields)
            new.append((uri if self._inbox else keys.result(part, uri), due, index, measured))
            self._measured_sent += measured
        if self._inbox is not None:
            return self._send_and_take(pipe, new)
        window = list(islice(self._flight, self._reach))
        for key in window:
            pipe.lpop(key)
        sent_at = time.monotonic()
        replies = pipe.execute()[len(new) :]
        got_at = time.monotonic()
        for key, due, index, measured in new:
            self._flight[key] = (min(due, sent_at), index, measured)
        if new and new[-1][3]:
            self._out.last_send_s = sent_at - self._t_measure
        hits = [i for i, blob in enumerate(replies) if blob is not None]
        for i in hits:
            self._complete(window[i], replies[i], got_at)
        if hits:
            self._reach = min(WINDOW, hits[-1] + 1 + MARGIN)
        return len(hits)

    def _send_and_take(self, pipe: Any, new: list[tuple[bytes, float, int, bool]]) -> int:
        """Open loop: send ``new``, then take the results the listener has received."""
        if new:
            pipe.execute()
            sent_at = time.monotonic()
            for token, due, index, measured in new:
                self._flight[token] = (min(due, sent_at), index, measured)
            if new[-1][3]:
                self._out.last_send_s = sent_at - self._t_measure
        assert self._inbox is not None
        return self._take(self._inbox.take(0.0))

    def _take(self, got: list[tuple[float, bytes]]) -> int:
        hits = 0
        for at, blob in got:
            token, _, result = blob.partition(b"\n")
            if token in self._flight:
                self._complete(token, result, at)
                hits += 1
        return hits

    def _block(self, now: float) -> None:
        """Wait for the first result of the oldest records in flight, no longer than until
        the next record is due."""
        wait = POLL_S
        if self.job.mode == "open" and self._sending(now):
            wait = min(wait, self._next_due - time.monotonic())
            if wait <= 0:
                return  # records are due
        if self._inbox is not None:
            self._take(self._inbox.take(wait))
            return
        window = list(islice(self._flight, WINDOW))
        if self._cluster and self._partitions > 1:  # the oldest record's partition's keys
            tag = keys.hash_tag(window[0])
            window = [key for key in window if keys.hash_tag(key) == tag]
        reply = self.db.blpop(window, timeout=max(wait, TICK_S))
        if reply is not None:
            self._complete(reply[0], reply[1], time.monotonic())
            self._reach = min(WINDOW, window.index(reply[0]) + 1 + MARGIN)

    def _complete(self, key: bytes, blob: bytes, at: float) -> None:
        sent_at, index, measured = self._flight.pop(key)
        out = self._out
        if self._t_measure <= at < self._t_stop:
            out.in_window += 1
        if self.job.mode == "closed":
            self._owed += 1
        if not measured:
            return
        out.answered += 1
        out.last_answer_s = at - self._t_measure
        self._latencies.append(at - sent_at)
        try:
            result = protocol.decode_result(blob)
        except ZooServingError as exc:
            result = exc
        if isinstance(result, ZooServingError):
            out.failed += 1
            out.errors[result.code] = out.errors.get(result.code, 0) + 1
        if len(out.samples) < self.job.keep:
            out.samples.append((index, result))

    def _finish(self, busy: float) -> Outcome:
        out = self._out
        out.sent = self._measured_sent
        out.latencies_s = np.frombuffer(self._latencies, dtype=np.float64).copy()
        out.busy = busy
        return out


class _Busy:
    """The share of a core this thread used from the measured window's start until it
    stopped sending (the drain after is mostly waiting)."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self._end: tuple[float, float] | None = None

    def mark(self, now: float, measuring: bool, stopped: bool) -> None:
        if self._start is None and measuring:
            self._start = (now, time.thread_time())
        if self._end is None and self._start is not None and stopped:
            self._end = (now, time.thread_time())

    def share(self) -> float:
        if self._start is None or self._end is None or self._end[0] <= self._start[0]:
            return 0.0
        return (self._end[1] - self._start[1]) / (self._end[0] - self._start[0])


def child_main(conn: Any, job: Job, progress: Any) -> None:
    """A spawned load process: prepare, say "ready", wait for the start time, run, report."""
    driver = Driver(job, progress)
    try:
        driver.prepare()
        conn.send(("ready", None))
        start_at = conn.recv()
        conn.send(("done", driver.run(start_at)))
    except BaseException as exc:
        if not isinstance(exc, ZooServingError):  # anything else may not pickle
            exc = ServerError(f"bench process failed: {traceback.format_exc()}")
        conn.send(("error", exc))
    finally:
        driver.close()
        conn.close()
