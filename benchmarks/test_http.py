"""HTTP front door against the Redis queue: the same model, the same server, one run.

One :class:`zoo_serving.Server` serves the 1,000-float Linear + softmax model (top-5 answers)
with its HTTP front door on. A load process (spawned, so it competes with the server for cores
and not for its GIL) runs rounds in turn, ``queue`` then ``http`` then ``queue``...: each sends
the same records, one record per call, from ``CONCURRENCY`` threads at once:

- **queue**: ``InputQueue.predict(record)`` (enqueue, then a blocking wait on the result);
- **http**: ``POST /v2/models/<name>/infer`` with one ``[1, 1000]`` FP32 tensor (httpx, one
  keep-alive connection per thread).

Each http round is set against the mean of the queue rounds either side; the figure is the
median ratio **http/queue** of records/s. Both paths end in the same stream and the same
workers, so the ratio is what the JSON, the HTTP server and its extra hop cost. A few answers
of both paths are checked to agree. Nothing about time is asserted. Run::

    .venv/bin/pytest benchmarks/test_http.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastapi  # noqa: F401  (the HTTP door runs on it)
import httpx
import numpy as np
import pytest

from zoo_serving import InputQueue, Server
from zoo_serving.broker.embedded import ManagedRedis, free_port

pytestmark = pytest.mark.timeout(300)

NAME = "linear"
RECORDS = 600  # per round
CONCURRENCY = 16
ROUNDS = 3  # http rounds; queue rounds are one more
SPOT = (0, 1, 2)


def _record(index: int) -> np.ndarray:
    return np.random.default_rng((99, index)).standard_normal(1000, dtype=np.float32)


def drive(conn: Any, redis_url: str, http_url: str, stream: str) -> None:
    """The load process: for each mode it is sent, run a round and send back its figures."""
    try:
        records = [_record(i) for i in range(RECORDS)]
        local = threading.local()

        def via_queue(i: int) -> Any:
            if not hasattr(local, "queue"):
                local.queue = InputQueue(url=redis_url, name=stream)
            return local.queue.predict({"input": records[i]}, timeout=60)

        def via_http(i: int) -> Any:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=http_url, timeout=60)
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1000],
                        "datatype": "FP32",
                        "data": records[i].tolist(),
                    }
                ]
            }
            reply = local.http.post(f"/v2/models/{NAME}/infer", json=body)
            reply.raise_for_status()
            data = reply.json()["outputs"][0]["data"]
            return [[int(data[k]), data[k + 1]] for k in range(0, len(data), 2)]

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            conn.send("ready")
            while (mode := conn.recv()) is not None:
                call = via_queue if mode == "queue" else via_http
                start = time.monotonic()
                answers = list(pool.map(call, range(RECORDS)))
                elapsed_s = time.monotonic() - start
                conn.send({"rate": RECORDS / elapsed_s, "spot": [answers[i] for i in SPOT]})
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


def _ask(conn: Any, message: Any, timeout_s: float = 120.0) -> Any:
    conn.send(message)
    if not conn.poll(timeout_s):
        raise TimeoutError(f"load process silent for {timeout_s}s")
    reply = conn.recv()
    if isinstance(reply, dict) and "crash" in reply:
        raise RuntimeError(f"load process failed:\n{reply['crash']}")
    return reply


def test_http_vs_queue_throughput(
    benchmark: Any,
    redis: ManagedRedis,
    linear_dir: Path,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    stream = "bench-http"
    config = {
        "model": {"path": str(linear_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": "1000"},
        "params": {"batch_size": 8, "top_n": 5},
        "http": {"port": free_port(), "model_name": NAME},
        "log": {"dir": str(tmp_path / "work"), "error": "n"},
    }
    ctx = multiprocessing.get_context("spawn")
    with Server(config) as server:
        conn, child = ctx.Pipe()
        load = ctx.Process(
            target=drive, args=(child, redis.url, server.http.url, stream), daemon=True
        )
        load.start()
        child.close()
        try:
            assert conn.poll(120) and conn.recv() == "ready"
            queue_rounds = [_ask(conn, "queue")]
            http_rounds = []

            def http_round() -> None:
                http_rounds.append(_ask(conn, "http"))
                queue_rounds.append(_ask(conn, "queue"))

            benchmark.pedantic(http_round, rounds=ROUNDS, iterations=1)
            conn.send(None)
        finally:
            load.join(30)
            if load.is_alive():
                load.kill()
    queue_rates = [r["rate"] for r in queue_rounds]
    http_rates = [r["rate"] for r in http_rounds]
    ratios = [h / ((queue_rates[i] + queue_rates[i + 1]) / 2) for i, h in enumerate(http_rates)]
    for q, h in zip(queue_rounds[0]["spot"], http_rounds[0]["spot"]):  # same answers both ways
        assert [i for i, _ in q] == [i for i, _ in h]
        np.testing.assert_allclose([p for _, p in q], [p for _, p in h], rtol=0, atol=1e-6)
    ratio = statistics.median(ratios)
    benchmark.extra_info.update(
        {
            "queue_records_per_s": statistics.median(queue_rates),
            "http_records_per_s": statistics.median(http_rates),
            "ratio": ratio,
            "ratios": ratios,
            "concurrency": CONCURRENCY,
        }
    )
    report_line(
        f"http vs queue, linear 1000 -> 1000 top-5, {CONCURRENCY} concurrent single-record "
        f"callers: queue {statistics.median(queue_rates):.0f} rec/s, http "
        f"{statistics.median(http_rates):.0f} rec/s, http/queue {ratio:.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )
