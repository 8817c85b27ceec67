"""The load process of ``test_doors.py``: each front door of a running server driven with the
same records, closed loop, in a process of its own (spawned: it competes with the server for
cores, not for its GIL).

Modes, each a function ``(job) -> Rate``:

- ``driver``: :func:`zoo_serving.bench.closed_loop`, the load loop of ``zoo-serve bench``
  (pipelined XADDs and LPOPs on one connection), ``IN_FLIGHT`` records in flight;
- ``aio``: ``IN_FLIGHT`` coroutines, each awaiting ``AsyncInputQueue.predict(record)`` in turn,
  on one queue (one connection for sends, one inbox listener);
- ``threads``: ``THREADS`` threads calling ``InputQueue.predict(record)`` on one queue;
- ``batch64``: one thread calling ``InputQueue.predict([64 records])``;
- ``http_binary`` / ``http_json``: ``IN_FLIGHT`` keep-alive connections, each posting one
  ``[1, 1000]`` FP32 record to ``/v2/models/<name>/infer`` in turn, with Triton's binary
  extension (input and output in binary) or as JSON. The HTTP client is a small asyncio one
  (``http_client``) so that the load generator spends as little of the two cores as the
  driver does.

Each mode warms up for ``warmup_s``, then counts the answers that arrive in the next
``duration_s`` seconds; it also returns a few answers to check against the record's own top-5.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

IN_FLIGHT = 32
THREADS = 16
BATCH = 64
SPOT = 4  # answers kept per round


@dataclass(frozen=True)
class DoorsJob:
    redis_url: str
    stream: str
    http_url: str
    model: str
    records: int = 256
    warmup_s: float = 0.5
    duration_s: float = 3.0


@dataclass
class Rate:
    answered: int
    duration_s: float
    spot: list[tuple[int, Any]]

    @property
    def per_s(self) -> float:
        return self.answered / self.duration_s


def record(index: int) -> np.ndarray:
    return np.random.default_rng((77, index)).standard_normal(1000, dtype=np.float32)


class Window:
    """Counts answers that arrive inside the measured window; says when to stop sending."""

    def __init__(self, job: DoorsJob) -> None:
        self.start = time.monotonic() + job.warmup_s
        self.end = self.start + job.duration_s
        self.count = 0
        self.spot: list[tuple[int, Any]] = []
        self._lock = threading.Lock()

    def sending(self) -> bool:
        return time.monotonic() < self.end

    def answered(self, n: int, index: int, answer: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if self.start <= now < self.end:
                self.count += n
            if len(self.spot) < SPOT:
                self.spot.append((index, answer))

    def rate(self, job: DoorsJob) -> Rate:
        return Rate(self.count, job.duration_s, self.spot)


# ------------------------------------------------------------------ the queue's doors


def by_driver(job: DoorsJob, records: list[np.ndarray]) -> Rate:
    from zoo_serving.bench import closed_loop

    point = closed_loop(
        job.redis_url,
        job.stream,
        [{"input": r} for r in records],
        clients=IN_FLIGHT,
        duration_s=job.duration_s,
        warmup_s=job.warmup_s,
        keep=SPOT,
        server_split=False,
    )
    return Rate(round(point.throughput * job.duration_s), job.duration_s, list(point.samples))


def by_aio(job: DoorsJob, records: list[np.ndarray]) -> Rate:
    from zoo_serving.aio import AsyncInputQueue

    async def main() -> Rate:
        window = Window(job)
        async with AsyncInputQueue(url=job.redis_url, name=job.stream) as q:

            async def caller(k: int) -> None:
                i = k
                while window.sending():
                    answer = await q.predict({"input": records[i % len(records)]}, timeout=30)
                    window.answered(1, i % len(records), answer)
                    i += IN_FLIGHT

            await asyncio.gather(*(caller(k) for k in range(IN_FLIGHT)))
        return window.rate(job)

    return asyncio.run(main())


def by_threads(job: DoorsJob, records: list[np.ndarray], threads: int, batch: int) -> Rate:
    from zoo_serving import InputQueue

    window = Window(job)
    with InputQueue(url=job.redis_url, name=job.stream) as q:

        def caller(k: int) -> None:
            i = k * batch
            while window.sending():
                chunk = [{"input": records[(i + j) % len(records)]} for j in range(batch)]
                answers = q.predict(chunk, timeout=30)
                window.answered(batch, i % len(records), answers[0])
                i += threads * batch

        pool = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return window.rate(job)


# ------------------------------------------------------------------ HTTP


def by_http(job: DoorsJob, records: list[np.ndarray], binary: bool) -> Rate:
    from http_client import HttpConnection, v2_request

    bodies = [v2_request(r[None], binary) for r in records]

    async def main() -> Rate:
        window = Window(job)

        async def caller(k: int) -> None:
            conn = await HttpConnection.open(job.http_url)
            path = f"/v2/models/{job.model}/infer"
            i = k
            try:
                while window.sending():
                    index = i % len(records)
                    body, headers = bodies[index]
                    answer = await conn.post_v2(path, body, headers)
                    window.answered(1, index, answer)
                    i += IN_FLIGHT
            finally:
                conn.close()

        await asyncio.gather(*(caller(k) for k in range(IN_FLIGHT)))
        return window.rate(job)

    return asyncio.run(main())


MODES: dict[str, Callable[[DoorsJob, list[np.ndarray]], Rate]] = {
    "driver": by_driver,
    "aio": by_aio,
    "threads": lambda job, rs: by_threads(job, rs, THREADS, 1),
    "batch64": lambda job, rs: by_threads(job, rs, 1, BATCH),
    "http_binary": lambda job, rs: by_http(job, rs, True),
    "http_json": lambda job, rs: by_http(job, rs, False),
}


def drive(conn: Any, job: DoorsJob) -> None:
    """The load process: for each mode it is sent, run a round and send back its Rate."""
    try:
        records = [record(i) for i in range(job.records)]
        conn.send("ready")
        while (mode := conn.recv()) is not None:
            conn.send(MODES[mode](job, records))
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


def topn_of(answer: Any) -> list[list[float]]:
    """A top-N answer of any door as ``[[index, score], ...]``."""
    if isinstance(answer, dict):  # a v2 answer's outputs, parsed by http_client
        answer = answer["topn"]
    return [[int(i), float(p)] for i, p in np.asarray(answer, np.float64).reshape(-1, 2)]
