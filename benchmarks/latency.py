"""Latency of one sequential client: served ``InputQueue.predict`` calls, a direct model call,
and the floor Redis itself sets, measured in the same run.

- **served**: a client process calls ``InputQueue.predict(x)`` one record at a time and times
  each call (``perf_counter``) against a :class:`zoo_serving.Server` in the benchmark's process.
  The client is in its own process so it shares no GIL with the server's threads.
- **direct**: ``Model.predict`` on a batch of one, in the benchmark's process, same records.
- **floor**: the same client process and plain redis-py: XADD the same request fields to one
  stream, a :class:`FloorEcho` thread in the benchmark's process (where the server's reader
  sits) wakes from a blocked XREADGROUP and XADDs a top-5-sized reply to a second stream, on
  which the client waits with a blocked XREAD. What any stream-fed server must pay at least.

Added latency is served minus direct, at p50 and at p99. Kinds alternate within each round
(direct, served, floor), and a round during which other processes took more than
``FOREIGN_MAX`` of the CPU is left out of the pooled percentiles.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

import zoo_serving
from harness import FOREIGN_MAX, basis
from payloads import INPUT, SEED, record_input
from zoo_serving import InputQueue
from zoo_serving.wire.native import encode_request, encode_topn

KINDS = ("direct", "served", "floor")
REPLY = encode_topn([(c, 0.1) for c in range(5)])  # the floor's reply: a top-5 result's size


@dataclass(frozen=True)
class LatencyJob:
    """What the latency client sends, and where."""

    url: str
    stream: str  # the served stream
    floor_in: str  # the floor's request stream (FloorEcho reads it)
    floor_out: str  # the floor's reply stream (the client reads it)
    shape: tuple[int, ...]
    distinct: int = 64  # records, cycled
    seed: int = SEED


def job_inputs(job: LatencyJob) -> list[np.ndarray]:
    return [record_input(job.seed, i, job.shape) for i in range(job.distinct)]


def run_latency_client(conn: Any, job: LatencyJob) -> None:
    """The client process: for each ``(kind, calls, first)`` it is sent, makes ``calls``
    sequential calls of that kind ("served" or "floor") starting at record ``first`` and sends
    back each call's seconds, plus the first few served answers. Stops on None."""
    try:
        inputs = job_inputs(job)
        db = redis.Redis.from_url(job.url)
        last_reply = b"0-0"
        with InputQueue(url=job.url, name=job.stream) as inq:
            conn.send("ready")
            while (command := conn.recv()) is not None:
                kind, calls, first = command
                seconds = np.empty(calls)
                answers: dict[int, Any] = {}
                for n in range(calls):
                    i = (first + n) % job.distinct
                    if kind == "served":
                        start = time.perf_counter()
                        answer = inq.predict({INPUT: inputs[i]}, timeout=10.0)
                        seconds[n] = time.perf_counter() - start
                        if len(answers) < 4:
                            answers[i] = answer
                    else:
                        fields = encode_request(f"floor-{n}", {INPUT: inputs[i]})
                        start = time.perf_counter()
                        db.xadd(job.floor_in, fields)
                        reply = db.xread({job.floor_out: last_reply}, count=1, block=10_000)
                        seconds[n] = time.perf_counter() - start
                        assert reply, "floor: no reply within 10 s"
                        last_reply = reply[0][1][0][0]
                conn.send({"seconds": seconds, "answers": answers})
        db.close()
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


class FloorEcho:
    """Answers every entry of ``floor_in`` with :data:`REPLY` on ``floor_out``: a thread that
    blocks in XREADGROUP (100 ms at a time, as the worker's reader does)."""

    def __init__(self, url: str, job: LatencyJob) -> None:
        self.db = redis.Redis.from_url(url)
        self.job = job
        self.db.xgroup_create(job.floor_in, "echo", id="0", mkstream=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floor-echo", daemon=True)
        self.answered = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = self.db.xreadgroup(
                "echo", "echo-1", {self.job.floor_in: ">"}, count=16, block=100, noack=True
            )
            for _stream, entries in reply or []:
                for _id, _fields in entries:
                    self.db.xadd(self.job.floor_out, {b"v": REPLY})
                    self.answered += 1

    def __enter__(self) -> FloorEcho:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.db.close()


def direct_seconds(model: zoo_serving.Model, inputs: list[np.ndarray], calls: int) -> np.ndarray:
    """Seconds of each ``model.predict`` on a batch of one, records cycled."""
    name = model.inputs[0].name
    batches = [{name: x[None]} for x in inputs]
    seconds = np.empty(calls)
    for n in range(calls):
        batch = batches[n % len(batches)]
        start = time.perf_counter()
        model.predict(batch)
        seconds[n] = time.perf_counter() - start
    return seconds


@dataclass(frozen=True)
class LatencyFigures:
    """Percentiles in milliseconds, pooled over the undisturbed rounds (all when none is)."""

    p50: dict[str, float]  # by kind
    p99: dict[str, float]
    calls: int  # per kind, pooled
    foreign: list[float]  # per round: the foreign CPU share over the round
    clean: list[int]

    @property
    def added_p50(self) -> float:
        return self.p50["served"] - self.p50["direct"]

    @property
    def added_p99(self) -> float:
        return self.p99["served"] - self.p99["direct"]

    @property
    def reliable(self) -> bool:
        return bool(self.clean)

    @classmethod
    def pool(cls, samples: list[dict[str, np.ndarray]], foreign: list[float]) -> LatencyFigures:
        clean = [i for i, f in enumerate(foreign) if f <= FOREIGN_MAX]
        used = clean or list(range(len(samples)))
        pooled = {k: np.concatenate([samples[i][k] for i in used]) * 1000.0 for k in KINDS}
        return cls(
            p50={k: float(np.percentile(v, 50)) for k, v in pooled.items()},
            p99={k: float(np.percentile(v, 99)) for k, v in pooled.items()},
            calls=len(pooled["served"]),
            foreign=foreign,
            clean=clean,
        )

    def line(self, label: str) -> str:
        def pair(kind: str) -> str:
            return f"{self.p50[kind]:.3f}/{self.p99[kind]:.3f}"

        return (
            f"{label}: predict() added latency p50 {self.added_p50:.3f} ms, "
            f"p99 {self.added_p99:.3f} ms (p50/p99 ms: served {pair('served')}, "
            f"direct {pair('direct')}, redis floor {pair('floor')}; {self.calls} calls each, "
            f"{basis(len(self.foreign), len(self.clean), self.foreign).replace('median', 'pool')})"
        )

    def extra_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "added_p50_ms": round(self.added_p50, 4),
            "added_p99_ms": round(self.added_p99, 4),
            "calls_per_kind": self.calls,
            "foreign_cpu": [round(f, 3) for f in self.foreign],
            "clean_rounds": self.clean,
        }
        for kind in KINDS:
            info[f"{kind}_p50_ms"] = round(self.p50[kind], 4)
            info[f"{kind}_p99_ms"] = round(self.p99[kind], 4)
        return info
