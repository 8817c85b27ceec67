"""Faults inside one server process: a poisoned batch, Redis restarting, a full queue, records
delivered too often."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import redis as redis_lib

from helpers import assert_top_n, build_sentinel_model, loop_steps_per_s, onnx_direct
from zoo_serving import InputQueue, OutputQueue, QueueFullError, Server, keys
from zoo_serving.backends.onnx_runtime import OnnxModel
from zoo_serving.broker.embedded import ManagedRedis, free_port
from zoo_serving.errors import InferenceError, ServerError


def build_lookup_model(path: Path, rows: int = 10, classes: int = 5) -> np.ndarray:
    """An ONNX model that looks up row ``idx`` of a table: an index out of range makes
    ONNX Runtime fail on the whole batch, though every record is well-formed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).random((rows, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0),
            helper.make_node("Squeeze", ["rows", "axes"], ["scores"]),
        ],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return table


class SizesOnnx(OnnxModel):
    """The ONNX Runtime backend, noting the size of every batch it is asked to run (before
    ONNX Runtime runs it, so the batches it rejects are noted too)."""

    sizes: ClassVar[list[int]] = []

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sizes.append(len(next(iter(batch.values()))))
        return super()._predict(batch)


def test_poisoned_record_fails_alone_and_batch_mates_match_framework(
    tmp_path, serve, client, output
) -> None:
    table = build_lookup_model(tmp_path / "lookup" / "lookup.onnx")
    indices = [3, 7, 99, 1, 5, 0, 8, 2]  # 99 is out of range: the framework rejects the batch
    client.enqueue_many((f"p{i}", {"idx": np.array([v], np.int64)}) for i, v in enumerate(indices))
    SizesOnnx.sizes.clear()
    server = serve(
        tmp_path / "lookup",
        **{
            "params.batch_size": 8,
            "params.max_wait_ms": 200,
            "model.backend": f"{__name__}:SizesOnnx",
        },
    )
    results = output.query_many([f"p{i}" for i in range(len(indices))], timeout=30)
    assert isinstance(results.pop("p2"), InferenceError)
    for i, v in enumerate(indices):
        if v != 99:
            assert_top_n(results[f"p{i}"], table[v], 3)
    # the batch of 8 ran once and failed, then was split in halves down to the bad record:
    # [p0..p3] fails, [p0 p1] serves, [p2 p3] fails, [p2] fails alone, [p3] serves, [p4..p7]
    warmup, *sizes = SizesOnnx.sizes
    assert warmup == 8 and sizes == [8, 4, 2, 2, 1, 1, 4], SizesOnnx.sizes
    assert server.runner.stats[0].batches == 1  # one batch of the worker's, split in the model


def test_redis_restart_mid_load_loses_nothing(onnx_model_dir, tmp_path) -> None:
    port = free_port()
    persist = ("--appendonly", "yes", "--appendfsync", "always")
    work = tmp_path / "redis"
    n = 6000
    xs = np.random.default_rng(8).normal(0, 50, (30, 3, 32, 32)).astype(np.float32)
    redis_server = ManagedRedis(work, port, *persist).start()
    url = redis_server.url
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": url, "stream": "restart", "shape": "3,32,32"},
        "params": {"batch_size": 8, "top_n": 3},
        "log": {"dir": str(tmp_path / "work")},
    }
    with InputQueue(url=url, name="restart") as client:  # all queued before serving starts
        client.enqueue_many((f"r{i}", {"t": xs[i % 30]}) for i in range(n))
    server = Server(config).start()
    try:
        probe = redis_lib.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while probe.llen(keys.finished("restart")) < 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        probe.close()
        assert redis_server.process is not None
        redis_server.process.kill()  # a crash: appendfsync always kept every write it answered
        redis_server.process.wait()
        redis_server.stop()
        time.sleep(1.0)  # workers see a dead Redis for a while
        redis_server = ManagedRedis(work, port, *persist).start()
        back = time.monotonic()
        probe = redis_lib.Redis.from_url(url)
        answered_before = probe.llen(keys.finished("restart"))  # restored from the AOF
        assert 200 <= answered_before < n, "the load finished before Redis went away"
        while probe.llen(keys.finished("restart")) == answered_before:
            assert time.monotonic() - back < 5.0, "no new result within 5 s of Redis returning"
            time.sleep(0.01)
        probe.close()
        with OutputQueue(url=url, name="restart") as output:
            results = output.query_many([f"r{i}" for i in range(n)], timeout=60)
        assert len(results) == n
        # well before params.claim_idle_ms (30 s): no record was left waiting to be taken over
        assert time.monotonic() - back < 20.0
        direct = onnx_direct(onnx_model_dir, xs)
        for i in range(n):
            assert_top_n(results[f"r{i}"], direct[i % 30], 3)
    finally:
        server.stop()
        redis_server.stop()


def test_full_queue_raises_and_never_trims(onnx_model_dir, serve_on, plane, stream):
    db = plane.db
    server = serve_on(onnx_model_dir, **{"data.max_queue_len": 6})
    server.stop()  # the bound stays published; nothing consumes now
    share = 6 // plane.partitions  # the bound is split over the partitions
    x = np.zeros((3, 32, 32), np.float32)
    with InputQueue(name=stream, config=plane.client_config()) as client:
        with pytest.raises(QueueFullError) as info:
            client.enqueue_many((f"q{i}", {"t": x}) for i in range(30))
        accepted = info.value.details["accepted"]
        with pytest.raises(QueueFullError, match=f"holds {share} unprocessed.*bound.*is {share}"):
            for i in range(30, 60):
                client.enqueue(f"q{i}", t=x)
    parts = plane.parts(stream)
    in_streams = [f[b"uri"].decode() for p in parts for _, f in db.xrange(p)]
    assert sorted(in_streams) == sorted(set(in_streams))
    assert set(accepted) <= set(in_streams)  # what the client was told went in, is in
    assert all(db.xlen(p) <= share for p in parts)  # nothing over the bound...
    assert max(db.xlen(p) for p in parts) == share  # ...and nothing trimmed to make room
    for p in parts:  # in order within a partition, as far as there was room
        uris = [int(f[b"uri"][1:]) for _, f in db.xrange(p)]
        assert uris == sorted(uris)


def test_waiting_client_gets_in_once_the_server_drains(
    onnx_model_dir, serve_on, plane, stream
) -> None:
    bound = plane.partitions  # one record per partition
    server = serve_on(onnx_model_dir, **{"data.max_queue_len": bound})
    server.stop()
    x = np.zeros((3, 32, 32), np.float32)
    config = plane.client_config()
    with InputQueue(name=stream, config=config, wait_if_full_s=30) as client:
        client.enqueue("w0", t=x)  # its partition is full
        serve_on(onnx_model_dir, **{"data.max_queue_len": bound})  # starts draining
        client.enqueue_many((f"w{i}", {"t": x}) for i in range(1, 10))
    with OutputQueue(name=stream, config=config) as output:
        assert len(output.query_many([f"w{i}" for i in range(10)], timeout=30)) == 10


def test_record_delivered_too_often_goes_to_dead_letter(
    onnx_model_dir, serve_on, plane, stream
) -> None:
    db = plane.db
    config = plane.client_config()
    with InputQueue(name=stream, config=config) as client:
        client.enqueue("poison", t=np.zeros((3, 32, 32), np.float32))
    part = keys.partition_of(stream, "poison", plane.partitions)
    db.xgroup_create(part, "serving", id="0")
    entry_id = db.xreadgroup("serving", "ghost", {part: ">"}, count=1)[0][1][0][0]
    for _ in range(3):  # a worker that took it and died, three times over
        db.xclaim(part, "serving", "ghost", 0, [entry_id])
    serve_on(onnx_model_dir, **{"params.claim_idle_ms": 100, "params.max_deliveries": 3})
    with (
        OutputQueue(name=stream, config=config) as output,
        pytest.raises(ServerError, match="delivered 5 times.*max_deliveries=3"),
    ):
        output.query("poison", timeout=30)
    dead = plane.dead(stream)
    assert len(dead) == 1
    assert db.xlen(keys.dead_letter(part)) == 1  # in its own partition's slot
    fields = dead[0][1]
    assert fields[b"uri"] == b"poison" and fields[b"zs_id"] == entry_id
    assert b"max_deliveries" in fields[b"zs_reason"]
    assert plane.pending(stream) == 0


def test_stop_does_not_wait_forever_for_a_redis_that_is_gone(tmp_path) -> None:
    # each batch takes about 1.5 s, so one is in the model when Redis dies; its results can
    # then never be written, and a stop must not retry them for ever
    steps = int(loop_steps_per_s() * 1.5)
    model_dir = build_sentinel_model(tmp_path / "slow" / "m.pt", slow_iters=steps).parent
    redis_server = ManagedRedis(tmp_path / "redis", free_port()).start()
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis_server.url, "stream": "gone", "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 3, "threads": 1},
        "log": {"dir": str(tmp_path / "work")},
    }
    server = Server(config).start()
    try:
        xs = np.random.default_rng(10).normal(0, 50, (4, 3, 32, 32)).astype(np.float32)
        probe = redis_lib.Redis.from_url(redis_server.url)
        with InputQueue(url=redis_server.url, name="gone") as client:
            client.enqueue_many((f"g{i}", {"t": x}) for i, x in enumerate(xs))
        deadline = time.monotonic() + 30
        while not probe.xpending("gone", "serving")["pending"]:  # the batch is in the model
            assert time.monotonic() < deadline
            time.sleep(0.01)
        probe.close()
        assert redis_server.process is not None
        redis_server.process.kill()
        redis_server.process.wait()
        runner = server.runner
        server.stop(timeout_s=30)
        assert runner is not None and runner.join(0), "a worker still retries its results"
    finally:
        server.stop()
        redis_server.stop()
    log_text = (tmp_path / "work" / "error.log").read_text()
    assert "giving up, the worker is stopping" in log_text
