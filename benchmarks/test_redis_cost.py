"""What one Redis node spends per record, for docs/scaling.md: 600 KB tensors, 150 KB JPEGs and
4 KB tensors served end to end (client add, worker read, complete step, client fetch) through a
model that costs next to nothing, on one redis-server.

Redis runs its commands on one core, so ``1000 / (Redis CPU ms per record)`` bounds the
records/s one node carries, whatever the workers; the served rate on this 2-core machine is
reported beside it (there the client, the workers and Redis share two cores). Reported, never
asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo_serving import InputQueue, OutputQueue, Server
from zoo_serving.broker.embedded import ManagedRedis, free_port

pytestmark = pytest.mark.timeout(600)

PAYLOADS = {  # name: (records, data.shape)
    "tensor 600 KB": (300, "150000"),
    "jpeg 150 KB": (300, "3,32,32"),
    "tensor 4 KB": (3000, "1000"),
}


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedRedis]:
    with ManagedRedis(tmp_path_factory.mktemp("redis"), port=free_port()) as server:
        yield server


def mean_model(where: Path, shape: str) -> Path:
    """``[N, *shape] -> [N]``: the mean over everything but the batch axis (a ReduceMean)."""
    import onnx
    from onnx import TensorProto, helper

    shape_: list[Any] = ["N", *(int(d) for d in shape.split(","))]
    axes = list(range(1, len(shape_)))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=axes, keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_)],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    where.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(where / "mean.onnx"))
    return where


def noise_jpeg(size_bytes: int) -> bytes:
    """A JPEG of noise, about ``size_bytes`` long."""
    import cv2

    rng = np.random.default_rng(1)
    side = 64
    while True:
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        if len(buf) >= size_bytes:
            return buf.tobytes()
        side += 16


def redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_redis_cpu_per_record(
    benchmark: Any, payload: str, own_redis: ManagedRedis, tmp_path: Path
) -> None:
    import time

    import redis

    records, shape = PAYLOADS[payload]
    model_dir = mean_model(tmp_path / "model", shape)
    if payload.startswith("jpeg"):
        value: Any = noise_jpeg(150_000)
    else:
        value = np.random.default_rng(0).random(int(shape), dtype=np.float32)
    stream = f"cost-{payload.replace(' ', '-')}"
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"src": own_redis.url, "stream": stream, "shape": shape},
        "params": {"batch_size": 16, "top_n": 0, "workers": 2, "threads": 1},
        "log": {"dir": str(tmp_path / "work"), "error": "n"},
    }
    probe = redis.Redis.from_url(own_redis.url)
    figures: dict[str, float] = {}

    def serve_all() -> None:
        with (
            Server(raw),
            InputQueue(url=own_redis.url, name=stream) as client,
            OutputQueue(url=own_redis.url, name=stream) as output,
        ):
            before = redis_cpu_s(probe)
            start = time.perf_counter()
            uris = client.enqueue_many((f"r{i}", {"x": value}) for i in range(records))
            got = output.query_many(uris, timeout=300)
            seconds = time.perf_counter() - start
            used = redis_cpu_s(probe) - before
        assert len(got) == records
        figures.update(rate=records / seconds, cpu_ms=1000 * used / records)

    benchmark.pedantic(serve_all, rounds=1, iterations=1)
    probe.close()
    carries = 1000 / figures["cpu_ms"]
    benchmark.extra_info.update(figures, node_records_per_s=carries)
    print(
        f"\n{payload}: served {figures['rate']:.0f} records/s here; Redis "
        f"{figures['cpu_ms']:.3f} CPU ms/record -> one node carries ~{carries:.0f} records/s"
    )
