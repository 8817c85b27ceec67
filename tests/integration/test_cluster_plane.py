"""Old clients on every data plane: on a Redis Cluster their result keys (no hash tag) are in
another slot than the stream, and are written before the entry is acknowledged."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import Server, keys


def test_seed_era_clients_are_answered_on_every_plane(
    plane: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**plane.data("image_stream"), "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 3},
        "log": {"dir": str(tmp_path / "work")},
    }
    db = plane.db
    image = jpeg(21, 32, 32)
    with Server(raw):
        # the seed's client adds to the stream by name: partition 0, whatever data.partitions
        db.xadd("image_stream", {"uri": "cat", "image": base64.b64encode(image)})
        db.xadd("image_stream", {"uri": "broken", "image": base64.b64encode(b"no jpeg")})
        deadline = time.monotonic() + 30
        while not (db.exists("result:cat") and db.exists("result:broken")):
            assert time.monotonic() < deadline, "no seed-era results"
            time.sleep(0.01)
        while plane.queued("image_stream") or plane.pending("image_stream"):
            assert time.monotonic() < deadline, "answered but not acknowledged"
            time.sleep(0.01)
    value = json.loads(db.hget("result:cat", "value"))
    assert_top_n(value, onnx_direct(onnx_model_dir, decoded_image(image)[None])[0], 3)
    assert db.hget("result:broken", "value") == b"NaN"
    assert 0 < db.pttl("result:cat") <= 3600 * 1000


def test_predict_from_threads_on_every_plane(
    plane: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    """``predict`` from several threads, through the client's inbox; when the stream is split,
    each call goes to the next partition, beside an inbox in that partition's slot, so the
    calls are spread over the partitions. Every answer is ONNX Runtime's own, and nothing is
    left pending."""
    import threading

    import numpy as np

    from zoo_serving import InputQueue

    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**plane.data("predict_stream"), "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 0},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(5).normal(size=(24, 3, 32, 32)).astype(np.float32)
    expected = onnx_direct(onnx_model_dir, xs)
    got: dict[int, Any] = {}
    with Server(raw), InputQueue(config=plane.client_config(), name="predict_stream") as q:
        assert q.partitions == plane.partitions

        def call(part: range) -> None:
            batch = q.predict([xs[i] for i in part], timeout=60)
            got.update(zip(part, batch))

        threads = [threading.Thread(target=call, args=(range(k, k + 6),)) for k in (0, 6, 12)]
        for t in threads:
            t.start()
        got[18] = q.predict(xs[18], timeout=60)
        got.update(zip(range(19, 24), q.predict([xs[i] for i in range(19, 24)], timeout=60)))
        for t in threads:
            t.join()
        assert plane.pending("predict_stream") == 0
        added = [plane.db.xinfo_stream(p)["entries-added"] for p in plane.parts("predict_stream")]
    assert sum(added) == 24
    assert all(added), f"the predict calls were not spread over the partitions: {added}"
    for i in range(24):
        np.testing.assert_allclose(
            np.asarray(got[i]).reshape(-1), expected[i].reshape(-1), atol=1e-5
        )


def test_the_asyncio_client_and_the_http_door_on_every_plane(
    plane: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    """``AsyncInputQueue`` predicts and enqueues by uri on one Redis and on a Redis Cluster
    (1 and 3 partitions): records by uri land in the partition the synchronous clients pick,
    so each kind finds the other's results, and predicts are spread over the partitions too;
    the HTTP door serves on the same plane. Every answer is ONNX Runtime's own."""
    import asyncio

    import httpx
    import numpy as np

    from zoo_serving import InputQueue, OutputQueue
    from zoo_serving.aio import AsyncInputQueue, AsyncOutputQueue
    from zoo_serving.broker.embedded import free_port

    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**plane.data("aio_stream"), "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 0},
        "http": {"port": free_port(), "model_name": "cnn"},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(8).normal(size=(30, 3, 32, 32)).astype(np.float32)
    expected = onnx_direct(onnx_model_dir, xs)
    config = plane.client_config()
    by_predict: list[int] = []

    def added() -> list[int]:  # records ever added to each partition
        return [plane.db.xinfo_stream(p)["entries-added"] for p in plane.parts("aio_stream")]

    async def use() -> tuple[list[Any], dict[str, Any], Any]:
        async with (
            AsyncInputQueue(config=config, name="aio_stream") as q,
            AsyncOutputQueue(config=config, name="aio_stream") as out,
        ):
            before = added()
            predicted = await asyncio.gather(*(q.predict(xs[i], timeout=60) for i in range(10)))
            by_predict.extend(after - was for after, was in zip(added(), before))
            await q.enqueue_many([(f"a{i}", {"t": xs[i]}) for i in range(10, 20)])
            by_uri = {f"a{i}": await out.query(f"a{i}", timeout=60) for i in range(10, 20)}
            return predicted, by_uri, await out.query("s20", timeout=60)

    with Server(raw) as server:
        with InputQueue(config=config, name="aio_stream") as sync_in:
            sync_in.enqueue("s20", t=xs[20])  # a synchronous client's record, read by asyncio
        predicted, by_uri, from_sync = asyncio.run(use())
        with OutputQueue(config=config, name="aio_stream") as sync_out:
            assert sync_out.query("a10") is None  # taken already by the asyncio query
        assert server.http is not None
        body = {"inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32",
                            "data": xs[21:24].ravel().tolist()}]}  # fmt: skip
        reply = httpx.post(f"{server.http.url}/v2/models/cnn/infer", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert plane.pending("aio_stream") == 0
    assert sum(by_predict) == 10
    if plane.partitions > 1:  # records by uri were spread as the uri says, and predicts too
        spread = [plane.db.llen(keys.finished(part)) for part in plane.parts("aio_stream")]
        assert sum(1 for n in spread if n) > 1, spread
        assert sum(1 for n in by_predict if n) > 1, by_predict
    for i in range(10):
        np.testing.assert_allclose(np.asarray(predicted[i]).ravel(), expected[i].ravel(), atol=1e-5)
    for i in range(10, 20):
        np.testing.assert_allclose(
            np.asarray(by_uri[f"a{i}"]).ravel(), expected[i].ravel(), atol=1e-5
        )
    np.testing.assert_allclose(np.asarray(from_sync).ravel(), expected[20].ravel(), atol=1e-5)
    served = np.asarray(reply.json()["outputs"][0]["data"], np.float32).reshape(3, -1)
    np.testing.assert_allclose(served, expected[21:24].reshape(3, -1), atol=1e-5)


def test_the_asyncio_client_waits_for_replicas_through_sentinel(
    onnx_model_dir: Path, tmp_path: Path
) -> None:
    """Through Sentinel, with ``data.replica_acks: 1``, an asyncio add returns once the
    replica has the records (WAIT after the add): with the replica gone, the add is refused
    naming the record, by the asyncio client as by the synchronous one."""
    import asyncio

    import numpy as np
    import pytest

    from cluster import LocalSentinel
    from zoo_serving import InputQueue
    from zoo_serving.aio import AsyncInputQueue
    from zoo_serving.errors import QueueError

    sentinel = LocalSentinel(tmp_path / "sentinel").start()
    try:
        data = {
            "src": sentinel.url,
            "stream": "acked",
            "replica_acks": 1,
            "replica_timeout_ms": 3000,
        }  # a busy machine's replica may lag
        raw = {
            "model": {"path": str(onnx_model_dir)},
            "data": {**data, "shape": "3,32,32"},
            "params": {"batch_size": 4, "top_n": 0},
            "log": {"dir": str(tmp_path / "work")},
        }
        xs = np.random.default_rng(9).normal(size=(4, 3, 32, 32)).astype(np.float32)

        async def use() -> tuple[list[Any], QueueError]:
            async with AsyncInputQueue(config={"data": data}, name="acked") as q:
                got = await q.predict([x for x in xs], timeout=60)
                sentinel.kill(sentinel.replica_port)  # now no replica can confirm an add
                with pytest.raises(QueueError, match="reached 0 replica") as unconfirmed:
                    await q.enqueue("late", t=xs[0])
                return got, unconfirmed.value

        with Server(raw):
            got, error = asyncio.run(use())
            with (
                InputQueue(config={"data": data}, name="acked") as sync_client,
                pytest.raises(QueueError, match="reached 0 replica") as sync_error,
            ):
                sync_client.enqueue("late-sync", t=xs[0])  # the same check, synchronously
    finally:
        sentinel.stop()
    assert error.details["unconfirmed"] == ["late"] and error.details["accepted"] == []
    assert sync_error.value.details["unconfirmed"] == ["late-sync"]
    expected = onnx_direct(onnx_model_dir, xs)
    np.testing.assert_allclose(np.asarray(got).reshape(4, -1), expected.reshape(4, -1), atol=1e-5)


def test_the_asyncio_client_waits_for_replicas_on_a_cluster(
    redis_cluster: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    """On a Redis Cluster with 3 partitions and ``data.replica_acks: 1``, the asyncio client
    sends each add's WAIT down the connection of the node that took the add: predicts over
    every partition are confirmed and answered; with the replica of one partition's master
    frozen, a record for that partition is refused naming it, and one for another partition
    goes in."""
    import asyncio

    import numpy as np
    import pytest

    from zoo_serving.aio import AsyncInputQueue
    from zoo_serving.errors import QueueError

    redis_cluster.flush()
    data = {"src": redis_cluster.url, "stream": "acked", "partitions": 3, "replica_acks": 1}
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**data, "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 0},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(9).normal(size=(12, 3, 32, 32)).astype(np.float32)
    first = next(
        f"late{i}" for i in range(99) if keys.partition_of("acked", f"late{i}", 3) == "acked"
    )
    master = redis_cluster.master_of("acked")
    elsewhere = [
        p for p in keys.partition_streams("acked", 3) if redis_cluster.master_of(p) != master
    ]
    assert elsewhere, "all 3 partitions on one master"
    other = next(
        f"in{i}" for i in range(99) if keys.partition_of("acked", f"in{i}", 3) in elsewhere
    )
    replica = redis_cluster.replica_of(master)

    async def use() -> tuple[list[Any], QueueError]:
        confirmed = {"data": {**data, "replica_timeout_ms": 3000}}  # a busy replica may lag
        async with (
            AsyncInputQueue(config=confirmed, name="acked") as q,
            AsyncInputQueue(
                config={"data": {**data, "replica_timeout_ms": 300}}, name="acked"
            ) as short,
        ):
            got = await q.predict([x for x in xs], timeout=60)
            redis_cluster.freeze(replica)  # for ~0.5 s, less than the cluster's node timeout
            try:
                with pytest.raises(QueueError, match="reached 0 replica") as unconfirmed:
                    await short.enqueue(first, t=xs[0])
                await short.enqueue(other, t=xs[1])  # its partition's replica is there
            finally:
                redis_cluster.thaw(replica)
            return got, unconfirmed.value

    with Server(raw):
        got, error = asyncio.run(use())
    redis_cluster.wait_ok()
    assert error.details["unconfirmed"] == [first] and error.details["accepted"] == []
    expected = onnx_direct(onnx_model_dir, xs)
    np.testing.assert_allclose(np.asarray(got).reshape(12, -1), expected.reshape(12, -1), atol=1e-5)


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_an_idle_worker_reads_a_record_on_any_partition_at_once(
    where: str, request: Any, stream: str
) -> None:
    """All three partitions empty, a worker's read waits for the first entry on *any* of
    them: a record added to another partition than the one it would have blocked on comes
    back from that same read. (It used to block on one partition for its share of the wait,
    which Redis ends only at its next hz tick, while the record waited.)"""
    import threading

    from zoo_serving.broker.connection import connect
    from zoo_serving.broker.partitions import open_queue
    from zoo_serving.config import DataConfig

    url = (
        request.getfixturevalue("redis_url")
        if where == "single"
        else request.getfixturevalue("redis_cluster").url
    )
    data = DataConfig(src=url, stream=stream, partitions=3)
    db = connect(data, socket_timeout=None)
    try:
        queue = open_queue(db, data, stream, "idle-worker", claim_idle_ms=60_000)
        queue.setup()
        parts = keys.partition_streams(stream, 3)
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.extend(queue.read(8, block_ms=3000)))
        reader.start()
        time.sleep(0.3)  # the read is waiting now, every partition empty
        for part in parts[1:]:  # not on partition 0, where a read's first round starts
            db.xadd(part, {"uri": part})
        reader.join(10)
        assert not reader.is_alive()
        assert got, "the read waited past records on the other partitions"
        assert {e.stream for e in got} <= set(parts)
    finally:
        for part in keys.partition_streams(stream, 3):
            db.delete(part)
        db.close()


def test_an_idle_worker_on_a_cluster_blocks_instead_of_polling(
    redis_cluster: Any, stream: str
) -> None:
    """An idle worker's reads of 3 empty partitions on a Redis Cluster wait in one blocking
    read per partition (each on a thread of its own): over a second of the worker's read
    loop (100 ms waits) the masters see tens of reads, not the hundreds that rounds of
    reads a few milliseconds apart took; and a record still comes back from the wait at
    once."""
    import threading

    from zoo_serving.broker.connection import connect
    from zoo_serving.broker.partitions import open_queue
    from zoo_serving.config import DataConfig

    def reads() -> int:  # XREADGROUPs served by the masters so far
        total = 0
        for port in redis_cluster.masters():
            for line in redis_cluster.cli(port, "INFO", "commandstats").splitlines():
                if line.startswith("cmdstat_xreadgroup:"):
                    total += int(line.split("calls=")[1].split(",")[0])
        return total

    data = DataConfig(src=redis_cluster.url, stream=stream, partitions=3)
    db = connect(data, socket_timeout=None)
    queue = open_queue(db, data, stream, "idle-worker", claim_idle_ms=60_000)
    try:
        queue.setup()
        queue.read(8, block_ms=100)  # the first round reads each partition's own pending
        before, started = reads(), time.monotonic()
        while time.monotonic() - started < 1.0:
            assert queue.read(8, block_ms=100) == []
        per_second = (reads() - before) / (time.monotonic() - started)
        print(f"\nidle worker, 3 partitions: {per_second:.0f} reads a second")
        assert per_second < 150, f"{per_second:.0f} reads a second while idle"
        # a wait outlives blocking reads it found under way (those of a wait a record on
        # another partition ended early): when one ends on its own timeout it is sent
        # again at once, so a record added after that still ends this wait
        parts = keys.partition_streams(stream, 3)
        first: list[Any] = []
        waiting = threading.Thread(target=lambda: first.extend(queue.read(8, block_ms=1000)))
        waiting.start()
        time.sleep(0.2)
        db.xadd(parts[1], {"uri": "early"})  # ends that wait; partitions 0 and 2 read on
        waiting.join(5)
        assert [e.fields[b"uri"] for e in first] == [b"early"]
        got: list[Any] = []
        waiting = threading.Thread(target=lambda: got.extend(queue.read(8, block_ms=4000)))
        waiting.start()
        time.sleep(1.5)  # the reads of partitions 0 and 2 ended during this wait
        sent = time.monotonic()
        db.xadd(parts[2], {"uri": "late"})
        waiting.join(5)
        assert [e.fields[b"uri"] for e in got] == [b"late"]
        assert time.monotonic() - sent < 0.5, "the record waited for the next wait"
    finally:
        queue.close()
        for part in keys.partition_streams(stream, 3):
            db.delete(part)
        db.close()


def test_a_record_taken_by_a_read_still_blocked_at_a_stop_is_handed_on(
    redis_cluster: Any, onnx_model_dir: Path, stream: str, tmp_path: Path
) -> None:
    """On a Redis Cluster a wait that one partition's record ends leaves the other
    partitions' blocking reads under way; a record one of them takes is the worker's (held,
    in its pending list): a reader told to stop before reading again still hands it on to
    be served (``Queue.read_last``), rather than leave it pending on a consumer that is
    gone until another takes it over."""
    import queue as queues
    import threading

    import numpy as np

    from zoo_serving import InputQueue
    from zoo_serving.serving.worker import Worker

    data = {"src": redis_cluster.url, "stream": stream, "partitions": 3}
    parts = keys.partition_streams(stream, 3)
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**data, "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 0},
        "log": {"dir": str(tmp_path / "work")},
    }
    on = {
        p: next(f"{p}-{i}" for i in range(99) if keys.partition_of(stream, f"{p}-{i}", 3) == p)
        for p in parts
    }
    x = np.zeros((3, 32, 32), np.float32)
    worker = Worker(raw).load()
    assert worker.queue is not None and worker._reader is not None
    first: list[Any] = []
    to_batch: queues.Queue[Any] = queues.Queue()
    try:
        waiting = threading.Thread(target=lambda: first.extend(worker.queue.read(8, 3000)))
        waiting.start()
        time.sleep(0.3)  # every partition's blocking read is under way
        with InputQueue(config={"data": data}, name=stream) as client:
            client.enqueue(on[parts[1]], t=x)  # ends the wait
            waiting.join(5)
            client.enqueue(on[parts[2]], t=x)  # taken by partition 2's read, still blocked
        halt = threading.Event()
        halt.set()  # the reader is told to stop before it reads again
        worker._reader.loop(halt, to_batch, queues.Queue())
        pending = {p: int(worker._redis.xpending(p, "serving")["pending"]) for p in parts}
    finally:
        worker.close()
        for part in parts:
            redis_cluster.cli(redis_cluster.master_of(part), "DEL", part)
    assert [e.fields[b"uri"].decode() for e in first] == [on[parts[1]]]
    handed = []
    while not to_batch.empty():
        batch = to_batch.get_nowait()
        handed += [item.uri.decode() for item in batch] if isinstance(batch, list) else []
    assert handed == [on[parts[2]]], "the record a blocked read took at the stop was not handed on"
    assert pending[parts[2]] == 1  # it is this worker's: delivered to it, not yet answered


def test_sentinels_that_ask_for_a_password_are_given_data_sentinel_password(
    onnx_model_dir: Path, tmp_path: Path
) -> None:
    """Sentinels with their own ``requirepass``: a server and a client given
    ``data.sentinel_password`` find the master through them and serve ONNX Runtime's answer;
    a client without it is told it cannot connect."""
    import numpy as np

    from cluster import LocalSentinel
    from zoo_serving import InputQueue
    from zoo_serving.errors import BrokerConnectionError

    sentinel = LocalSentinel(tmp_path / "sentinel", password="s3ntinel").start()
    try:
        data = {"src": sentinel.url, "stream": "guarded", "sentinel_password": "s3ntinel"}
        raw = {
            "model": {"path": str(onnx_model_dir)},
            "data": {**data, "shape": "3,32,32"},
            "params": {"batch_size": 4, "top_n": 0},
            "log": {"dir": str(tmp_path / "work")},
        }
        x = np.random.default_rng(10).normal(size=(3, 32, 32)).astype(np.float32)
        with Server(raw), InputQueue(config={"data": data}, name="guarded") as client:
            got = client.predict(x, timeout=60)
        with pytest.raises(BrokerConnectionError):
            InputQueue(config={"data": {"src": sentinel.url}}, name="guarded")
    finally:
        sentinel.stop()
    expected = onnx_direct(onnx_model_dir, x[None])
    np.testing.assert_allclose(np.asarray(got).ravel(), expected.ravel(), atol=1e-5)
