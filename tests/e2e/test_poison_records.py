"""Records that kill or hang their worker process, under the processes runner.

The model is a real TorchScript model (``helpers.build_sentinel_model``): PyTorch itself dies
of SIGFPE on a CRASH record, and spins on a HANG record. One such record in a batch of 8 must
cost its batch-mates nothing but a retry: they get the framework's answers, and only the culprit
ends in the dead-letter stream (a crash) or with a ``batch_timeout`` error (a hang).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import CRASH, HANG, assert_top_n, build_sentinel_model, sentinel_direct
from zoo_serving import InputQueue, OutputQueue, Server, keys
from zoo_serving.broker.presence import Presence
from zoo_serving.errors import BatchTimeoutError, ServerError

pytestmark = pytest.mark.timeout(300)


def config(model_dir: Path, redis_url: str, stream: str, work: Path, **params: Any) -> dict:
    return {
        "model": {"path": str(model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "params": {
            "runner": "processes",
            "workers": 2,
            "threads": 1,
            "batch_size": 8,
            "max_wait_ms": 1000,  # the 8 records go in as one batch
            "top_n": 3,
            "claim_idle_ms": 500,
            **params,
        },
        "log": {"dir": str(work)},
    }


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (8, 3, 32, 32)).astype(np.float32)


def test_a_record_that_crashes_its_worker_takes_no_batch_mate_to_the_dead_letter_stream(
    tmp_path, redis_url, redis_client, stream
) -> None:
    model_dir = build_sentinel_model(tmp_path / "crash" / "m.pt").parent
    xs = inputs(seed=21)
    xs[3, 0, 0, 0] = CRASH
    with InputQueue(url=redis_url, name=stream) as client:
        client.enqueue_many((f"c{i}", {"t": xs[i]}) for i in range(8))
    server = Server(
        config(model_dir, redis_url, stream, tmp_path / "work", max_deliveries=3)
    ).start(timeout_s=120)
    try:
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"c{i}" for i in range(8)], timeout=180)
        # it killed a worker in its batch, then twice alone: each was replaced
        deadline = time.monotonic() + 60
        while server.runner.restarts < 3:
            assert time.monotonic() < deadline, "the dead workers were not replaced"
            time.sleep(0.1)
    finally:
        server.stop()
    error = results.pop("c3")
    assert isinstance(error, ServerError) and "max_deliveries=3" in str(error), error
    direct = sentinel_direct(model_dir, np.delete(xs, 3, axis=0))
    for j, i in enumerate(i for i in range(8) if i != 3):
        assert_top_n(results[f"c{i}"], direct[j], 3)
    dead = redis_client.xrange(keys.dead_letter(stream))
    assert [fields[b"uri"] for _, fields in dead] == [b"c3"]  # the culprit alone
    finished = Counter(redis_client.lrange(keys.finished(stream), 0, -1))
    assert len(finished) == 8 and set(finished.values()) == {1}
    assert redis_client.xpending(stream, "serving")["pending"] == 0


def test_a_worker_stuck_on_a_hanging_record_is_replaced_and_the_record_isolated(
    tmp_path, redis_url, redis_client, stream
) -> None:
    # a HANG record makes PyTorch spin for good: only ending the process stops it
    model_dir = build_sentinel_model(tmp_path / "hang" / "m.pt", hang_iters=2**62).parent
    xs = inputs(seed=22)
    xs[6, 0, 0, 0] = HANG
    server = Server(
        config(model_dir, redis_url, stream, tmp_path / "work", batch_timeout_s=1.0)
    ).start(timeout_s=120)
    try:
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"h{i}", {"t": xs[i]}) for i in range(8))
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"h{i}" for i in range(8)], timeout=180)
        error = results.pop("h6")
        assert isinstance(error, BatchTimeoutError), error
        direct = sentinel_direct(model_dir, np.delete(xs, 6, axis=0))
        for j, i in enumerate(i for i in range(8) if i != 6):
            assert_top_n(results[f"h{i}"], direct[j], 3)
        deadline = time.monotonic() + 60
        while server.runner.restarts < 2:  # the batch's worker, then the record's alone
            assert time.monotonic() < deadline, "the stuck workers were not replaced"
            time.sleep(0.1)
        # the replacements serve
        assert server.runner.wait_ready(120)
        assert Presence(redis_client, stream).wait_ready(60)
        with InputQueue(url=redis_url, name=stream) as client:
            assert len(client.predict(list(inputs(seed=23)[:2]), timeout=60)) == 2
        # a stop does not wait on a stuck worker: the one it meets leaves within the limit
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue("h-last", t=xs[6])
        time.sleep(0.5)
        started = time.monotonic()
    finally:
        server.stop(timeout_s=60)
    assert time.monotonic() - started < 30, "stop waited for the stuck model to be killed"
    assert redis_client.xlen(keys.dead_letter(stream)) == 0
