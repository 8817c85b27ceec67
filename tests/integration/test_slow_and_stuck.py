"""Slow batches and stuck models, in one server process (the threads runner).

A slow but healthy worker keeps its records: nobody, itself included, takes them over while
they are in its pipeline, however long a batch takes against ``params.claim_idle_ms``. A batch
that runs past ``params.batch_timeout_s`` is given up on: the worker says it is not ready, the
hanging record is found by retrying the batch's records one at a time and gets a
``batch_timeout`` error, and its batch-mates get their normal answers.

The models are real TorchScript models that spin in a loop (see ``helpers.build_sentinel_model``);
loop lengths are scaled to this machine's speed, measured once per session.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from helpers import HANG, assert_top_n, build_sentinel_model, loop_steps_per_s, sentinel_direct
from zoo_serving import keys
from zoo_serving.broker.presence import Presence
from zoo_serving.errors import BatchTimeoutError


@pytest.fixture(scope="module")
def steps_per_s() -> float:
    return loop_steps_per_s()


def inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, 3, 32, 32)).astype(np.float32)


def test_slow_workers_never_take_over_their_own_or_each_others_records(
    tmp_path, steps_per_s, serve, client, output, redis_client, stream, caplog
) -> None:
    # every batch takes about 0.6 s, twice params.claim_idle_ms: each record of a batch sits
    # in its worker's pipeline for several claim periods
    model_dir = build_sentinel_model(tmp_path / "slow" / "m.pt", slow_iters=int(steps_per_s * 0.6))
    server = serve(
        model_dir.parent,
        **{
            "params.batch_size": 4,
            "params.workers": 2,
            "params.claim_idle_ms": 300,
            "params.threads": 1,
        },
    )
    n = 24
    xs = inputs(n, seed=11)
    caplog.set_level(logging.INFO, logger="zoo_serving")
    client.enqueue_many((f"s{i}", {"t": xs[i]}) for i in range(n))
    results = output.query_many([f"s{i}" for i in range(n)], timeout=120)

    direct = sentinel_direct(model_dir.parent, xs)
    for i in range(n):
        assert_top_n(results[f"s{i}"], direct[i], 3)
    stats = server.runner.stats
    assert sum(s.succeeded for s in stats) == n  # each record ran once: counted once
    assert sum(s.failed for s in stats) == 0
    assert not [r for r in caplog.records if "took over" in r.getMessage()]
    assert redis_client.xlen(keys.dead_letter(stream)) == 0
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert redis_client.llen(keys.finished(stream)) == n  # one result each


def test_a_hanging_record_is_isolated_and_answered_with_batch_timeout(
    tmp_path, steps_per_s, serve, client, output, redis_client, stream
) -> None:
    # a HANG record makes the model spin about 4 s (then it returns: a thread cannot be
    # killed, and the test process must get its CPU back); the limit is 0.5 s
    model_dir = build_sentinel_model(tmp_path / "hang" / "m.pt", hang_iters=int(steps_per_s * 4))
    server = serve(
        model_dir.parent,
        **{
            "params.batch_size": 8,
            "params.max_wait_ms": 500,
            "params.claim_idle_ms": 300,
            "params.batch_timeout_s": 0.5,
            "params.threads": 1,
        },
    )
    presence = Presence(redis_client, stream)
    assert presence.is_ready()
    xs = inputs(8, seed=12)
    xs[5, 0, 0, 0] = HANG
    client.enqueue_many((f"h{i}", {"t": xs[i]}) for i in range(8))

    # while the model hangs on the batch, the only worker makes no progress: not ready
    deadline = time.monotonic() + 30
    while presence.is_ready():
        assert time.monotonic() < deadline, "still ready while the model hangs"
        time.sleep(0.02)
    beat = next(iter(presence.heartbeats().values()))
    assert beat["ready"] is False and beat["stuck_s"] > 0

    results = output.query_many([f"h{i}" for i in range(8)], timeout=120)
    error = results.pop("h5")
    assert isinstance(error, BatchTimeoutError), error
    assert error.code == "batch_timeout" and "params.batch_timeout_s=0.5s" in str(error)
    direct = sentinel_direct(model_dir.parent, np.delete(xs, 5, axis=0))
    for j, i in enumerate(i for i in range(8) if i != 5):
        assert_top_n(results[f"h{i}"], direct[j], 3)

    # the model returned: the worker serves again and says so
    assert presence.wait_ready(timeout_s=30)
    later = inputs(3, seed=13)
    assert len(client.predict(list(later), timeout=60)) == 3
    stats = server.runner.stats[0]
    assert stats.succeeded == 7 + 3  # the given-up batch's late results were not counted
    assert stats.failures_by_code == {"batch_timeout": 1}
    # each of the 8 enqueued records listed once (predict's 3 are private to their caller)
    assert redis_client.llen(keys.finished(stream)) == 8
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert redis_client.xlen(keys.dead_letter(stream)) == 0


def test_stop_does_not_wait_for_a_hanging_model(
    tmp_path, steps_per_s, serve, client, output, redis_client, stream
) -> None:
    # the model spins about 10 s on the record, longer than the stop below may take
    model_dir = build_sentinel_model(tmp_path / "hang" / "m.pt", hang_iters=int(steps_per_s * 10))
    server = serve(model_dir.parent, **{"params.batch_timeout_s": 0.5, "params.threads": 1})
    x = inputs(1, seed=14)[0]
    x[0, 0, 0] = HANG
    client.enqueue("stuck", t=x)
    presence = Presence(redis_client, stream)
    deadline = time.monotonic() + 30
    while presence.is_ready():
        assert time.monotonic() < deadline, "the model never hung"
        time.sleep(0.02)
    runner = server.runner
    server.stop(timeout_s=4)
    assert runner.join(0), "a worker thread still waits on the model"
    # alone in its batch, the record was answered before the worker left it
    with pytest.raises(BatchTimeoutError):
        output.query("stuck", timeout=10)
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    # the call left behind returns in the end; a process must not exit while it runs
    deadline = time.monotonic() + 60
    while any(t.name.endswith("-infer") for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
