"""The benchmark client: a process of its own that sends a round's records and waits for every
result, driven through a pipe by the benchmark (see ``harness.py``).

It runs in another process so that it shares no GIL with a server in the benchmark's process,
as a real client would not.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from payloads import INPUT, SEED, client_inputs
from zoo_serving import InputQueue, OutputQueue

RESULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ClientJob:
    """What the client process sends, and where."""

    url: str
    stream: str
    shape: tuple[int, ...]
    records: int
    chunk: int
    spot: tuple[int, ...]
    seed: int = SEED
    payload: str = "tensor"  # or "jpeg": see payloads.py
    shared_memory: bool = False  # run_predict_client: tensors through a shared memory region
    in_flight: int = 32  # run_predict_client: records in flight


def run_client(conn: Any, job: ClientJob) -> None:
    """The client process. Builds every record, says "ready", then for each round number it
    is sent: enqueues all records in chunks, waits for every result and sends back the time
    from the first enqueue to the last result. Stops on None."""
    try:
        inputs = client_inputs(job.payload, job.seed, job.shape, job.records)
        with (
            InputQueue(url=job.url, name=job.stream) as inq,
            OutputQueue(url=job.url, name=job.stream) as outq,
        ):
            conn.send("ready")
            while (round_no := conn.recv()) is not None:
                uris = [f"{round_no}-{i}" for i in range(job.records)]
                start = time.monotonic()
                for first in range(0, job.records, job.chunk):
                    last = min(first + job.chunk, job.records)
                    inq.enqueue_many((uris[i], {INPUT: inputs[i]}) for i in range(first, last))
                results = outq.query_many(uris, RESULT_TIMEOUT_S)
                elapsed_s = time.monotonic() - start
                errors = [f"{u}: {r!r}" for u, r in results.items() if isinstance(r, Exception)]
                conn.send(
                    {
                        "elapsed_s": elapsed_s,
                        "received": len(results),
                        "errors": errors[:5],
                        "spot": {i: results.get(uris[i]) for i in job.spot},
                    }
                )
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


def run_predict_client(conn: Any, job: ClientJob) -> None:
    """A client process of the public asyncio API: each round, ``job.in_flight`` coroutines
    await ``AsyncInputQueue.predict`` on the round's records in turn, through a shared memory
    region (``job.shared_memory``) or through Redis; reports as :func:`run_client`."""
    import asyncio

    from zoo_serving.aio import AsyncInputQueue

    async def main() -> None:
        inputs = client_inputs(job.payload, job.seed, job.shape, job.records)
        size = 2 * job.in_flight * inputs[0].nbytes if job.shared_memory else 0
        async with AsyncInputQueue(url=job.url, name=job.stream, shared_memory=size) as q:
            conn.send("ready")
            while conn.recv() is not None:
                results: dict[int, Any] = {}
                todo = iter(range(job.records))

                async def caller(todo: Any, results: dict[int, Any]) -> None:
                    for i in todo:
                        (results[i],) = await q.predict_many(
                            [{INPUT: inputs[i]}], RESULT_TIMEOUT_S, return_exceptions=True
                        )

                start = time.monotonic()
                await asyncio.gather(*(caller(todo, results) for _ in range(job.in_flight)))
                elapsed_s = time.monotonic() - start
                errors = [f"{i}: {r!r}" for i, r in results.items() if isinstance(r, Exception)]
                conn.send(
                    {
                        "elapsed_s": elapsed_s,
                        "received": len(results),
                        "errors": errors[:5],
                        "spot": {i: results.get(i) for i in job.spot},
                    }
                )

    try:
        asyncio.run(main())
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


class ClientProcess:
    """A function in a spawned process, driven through a pipe: :func:`run_client` by default,
    called as ``target(conn, job)``."""

    def __init__(self, job: Any, target: Callable[[Any, Any], None] = run_client) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.job = job
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, job), daemon=True)
        self.process.start()
        child.close()
        self._rounds = 0

    def recv(self, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"client process silent for {timeout_s}s")
        try:
            message = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(
                f"client process ended (exit code {self.process.exitcode}) without a report"
            ) from None
        if isinstance(message, dict) and "crash" in message:
            raise RuntimeError(f"client process failed:\n{message['crash']}")
        return message

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        message = self.recv(timeout_s)
        assert message == "ready", message

    def run_round(self) -> dict[str, Any]:
        """One timed round: every record enqueued, every result back."""
        self._rounds += 1
        self.conn.send(self._rounds)
        return self.recv(RESULT_TIMEOUT_S + 30)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone: the join below tells
            self.conn.send(None)
        self.conn.close()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
