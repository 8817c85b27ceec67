"""Results through a client's inbox (protocol 3): the asyncio client and the threads' client
with many records in flight, each call getting its own record's answer (equal to ONNX
Runtime's), one listener per client, the add script called fewer times than records sent,
and clients of protocol 2 still answered at their reply keys."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, keys
from zoo_serving.aio import AsyncInputQueue, AsyncOutputQueue
from zoo_serving.errors import QueueFullError, ResultTimeoutError, ShapeError
from zoo_serving.wire import native


def _xs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, 3, 32, 32)).astype(np.float32)


def _add_calls(redis_client: Any) -> int:
    stats = redis_client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


def test_aio_predict_many_in_flight_gets_each_its_own_answer(
    onnx_model_dir, serve, redis_url, redis_client, stream
) -> None:
    serve(onnx_model_dir, **{"params.batch_size": 8})
    xs = _xs(64, 1)
    direct = onnx_direct(onnx_model_dir, xs)

    async def run() -> tuple[list[Any], list[Any], int]:
        async with AsyncInputQueue(url=redis_url, name=stream) as q:
            assert await q.wait_ready(30)
            before = _add_calls(redis_client)
            # bad records among them are answered before the batches they came with, so
            # results come back out of order: each must still reach its own call
            calls = [
                q.predict(x if i % 5 else x[:, :16, :16], timeout=30) for i, x in enumerate(xs[:48])
            ]
            singles = await asyncio.gather(*calls, return_exceptions=True)
            calls = _add_calls(redis_client) - before
            batch = await q.predict(list(xs[48:]), timeout=30)
            return list(singles), batch, calls

    singles, batch, calls = asyncio.run(run())
    for i, result in enumerate(singles + batch):
        if i % 5 or i >= 48:
            assert_top_n(result, direct[i], 3)
        else:
            assert isinstance(result, ShapeError) and "(3, 16, 16)" in str(result), result
    # 48 calls in flight at once went in a few round trips, not one each
    assert calls < 48 / 4, calls
    # every result came through an inbox and was taken; no per-record reply keys
    assert redis_client.keys(keys.reply(stream, "*")) == []
    assert [k for k in redis_client.keys(keys.inbox(stream, "*")) if redis_client.llen(k)] == []


def test_aio_enqueue_by_uri_and_fetch_with_the_async_output_queue(
    onnx_model_dir, serve, redis_url, stream
) -> None:
    serve(onnx_model_dir)
    xs = _xs(3, 2)
    direct = onnx_direct(onnx_model_dir, xs)

    async def run() -> list[Any]:
        async with (
            AsyncInputQueue(url=redis_url, name=stream) as q,
            AsyncOutputQueue(url=redis_url, name=stream) as out,
        ):
            await q.enqueue_many((f"u{i}", {"t": x}) for i, x in enumerate(xs))
            first = await out.query("u0", timeout=30)
            time.sleep(0.5)
            rest = await out.dequeue()
            return [first, rest["u1"], rest["u2"]]

    for i, result in enumerate(asyncio.run(run())):
        assert_top_n(result, direct[i], 3)


def test_threads_share_one_listener_and_round_trips(
    onnx_model_dir, serve, client, redis_client
) -> None:
    serve(onnx_model_dir, **{"params.batch_size": 8})
    xs = _xs(96, 3)
    direct = onnx_direct(onnx_model_dir, xs)
    client.predict(xs[0], timeout=30)  # warm: the listener is up
    before = _add_calls(redis_client)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda x: client.predict(x, timeout=30), xs))
    calls = _add_calls(redis_client) - before
    for i, result in enumerate(got):
        assert_top_n(result, direct[i], 3)
    name = f"zoo-inbox-{client.inbox.id[:8]}"
    listeners = [t for t in threading.enumerate() if t.name == name]
    assert len(listeners) == 1
    assert calls < len(xs), calls  # sixteen threads shared round trips


def test_a_call_that_gives_up_drops_its_late_result(
    onnx_model_dir, serve, client, redis_client, stream
) -> None:
    x = _xs(1, 4)[0]
    with pytest.raises(ResultTimeoutError, match="is a server running"):
        client.predict(x, timeout=0.3)  # no server yet: the record waits in the stream
    serve(onnx_model_dir)
    direct = onnx_direct(onnx_model_dir, x[None])
    # the late answer of the first call reaches the inbox and is dropped; this one is ours
    assert_top_n(client.predict(x, timeout=30), direct[0], 3)
    time.sleep(0.3)
    assert redis_client.llen(keys.inbox(stream, client.inbox.id)) == 0


def test_queue_full_fails_only_the_calls_that_did_not_go_in(
    onnx_model_dir, redis_url, redis_client, stream
) -> None:
    redis_client.set(keys.max_len(stream), 5)

    async def run() -> list[Any]:
        async with AsyncInputQueue(url=redis_url, name=stream) as q:
            calls = [q.predict(x, timeout=1.0) for x in _xs(8, 5)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(run())
    full = [o for o in outcomes if isinstance(o, QueueFullError)]
    timed_out = [o for o in outcomes if isinstance(o, ResultTimeoutError)]
    assert (len(full), len(timed_out)) == (3, 5)  # five went in (nobody serves them)
    assert "data.max_queue_len" in str(full[0])


def test_a_protocol_2_client_is_answered_at_its_reply_key(
    onnx_model_dir, serve, redis_client, stream
) -> None:
    serve(onnx_model_dir)
    x = _xs(1, 6)[0]
    fields = native.encode_request("old-1", {"t": x}, reply_to=b"tok2")
    assert fields[b"zs"] == b"2"
    redis_client.xadd(stream, fields)
    _key, blob = redis_client.blpop([keys.reply(stream, "tok2")], timeout=30)
    assert_top_n(native.decode_result(blob), onnx_direct(onnx_model_dir, x[None])[0], 3)


def test_closing_stops_the_listener_at_once(redis_url, stream) -> None:
    queue = InputQueue(url=redis_url, name=stream)
    with pytest.raises(ResultTimeoutError):
        queue.predict(_xs(1, 7)[0], timeout=0.1)
    listener = queue.inbox.thread
    assert listener is not None and listener.is_alive()
    queue.close()
    listener.join(0.5)
    assert not listener.is_alive(), "the listener outlived close()"


def test_threads_combined_on_a_full_stream_fail_only_the_records_that_did_not_fit(
    redis_url, redis_client, stream
) -> None:
    redis_client.set(keys.max_len(stream), 6)
    with InputQueue(url=redis_url, name=stream) as q, ThreadPoolExecutor(12) as pool:

        def call(x: np.ndarray) -> Any:
            try:
                return q.predict(x, timeout=1.0)
            except (QueueFullError, ResultTimeoutError) as exc:
                return exc

        outcomes = list(pool.map(call, _xs(12, 8)))
    full = [o for o in outcomes if isinstance(o, QueueFullError)]
    assert (len(full), redis_client.xlen(stream)) == (6, 6)  # six went in, nobody serves them
    assert all(isinstance(o, ResultTimeoutError) for o in outcomes if o not in full)
