"""Every record gets exactly one result; bad records fail alone with a clear error."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import keys
from zoo_serving.errors import (
    DecodeError,
    DtypeError,
    MissingInputError,
    ResultTimeoutError,
    ShapeError,
)


def test_thousand_records_each_get_exactly_one_result(
    onnx_model_dir, serve, client, output, redis_client, stream
) -> None:
    n = 1000
    rng = np.random.default_rng(4)
    xs = rng.normal(0, 50, (50, 3, 32, 32)).astype(np.float32)  # 50 distinct inputs, reused
    serve(onnx_model_dir, **{"params.batch_size": 8})
    for start in range(0, n, 100):
        client.enqueue_many((f"r{i}", {"t": xs[i % 50]}) for i in range(start, start + 100))
    results = output.query_many([f"r{i}" for i in range(n)], timeout=60)
    assert len(results) == n
    direct = onnx_direct(onnx_model_dir, xs)
    for i in range(n):
        assert_top_n(results[f"r{i}"], direct[i % 50], 3)
    # every record acknowledged and removed; no second result waiting anywhere
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert output.dequeue() == {}
    assert not redis_client.exists(keys.result(stream, "r0"))


def test_bad_records_fail_alone_in_a_shared_batch(onnx_model_dir, serve, client, output):
    good = np.random.default_rng(5).normal(0, 50, (3, 32, 32)).astype(np.float32)
    img = jpeg(7)
    records = [
        ("good-tensor", {"t": good}),
        ("corrupt-image", {"t": img[: len(img) // 3] + b"\x00garbage"}),
        ("wrong-shape", {"t": np.zeros((3, 16, 16), np.float32)}),
        ("good-image", {"t": img}),
        ("wrong-dtype", {"t": good.astype(np.float64)}),
    ]
    client.enqueue_many(records)
    client.db.xadd(client.stream, {"uri": "no-payload", "zs": "1"})  # a record with no input
    serve(onnx_model_dir, **{"params.batch_size": 8, "params.max_wait_ms": 50})

    direct = onnx_direct(onnx_model_dir, np.stack([good, decoded_image(img)]))
    assert_top_n(output.query("good-tensor", timeout=30), direct[0], 3)
    assert_top_n(output.query("good-image", timeout=30), direct[1], 3)

    expected = {
        "corrupt-image": (DecodeError, "do not decode as an image"),
        "wrong-shape": (ShapeError, "(3, 16, 16)"),
        "wrong-dtype": (DtypeError, "float64"),
        "no-payload": (MissingInputError, "no payload"),
    }
    for uri, (cls, words) in expected.items():
        with pytest.raises(cls, match=None) as info:
            output.query(uri, timeout=30)
        assert words in str(info.value), (uri, str(info.value))
        assert info.value.code == cls.code


def test_dequeue_returns_every_unfetched_result_once(onnx_model_dir, serve, client, output):
    serve(onnx_model_dir)
    xs = np.random.default_rng(6).normal(0, 50, (10, 3, 32, 32)).astype(np.float32)
    client.enqueue_many((f"d{i}", {"t": x}) for i, x in enumerate(xs))
    client.enqueue("d-bad", t=np.zeros(3, np.float32))
    got: dict = {}
    deadline = time.monotonic() + 30
    while len(got) < 11 and time.monotonic() < deadline:
        got.update(output.dequeue())
        time.sleep(0.05)
    assert sorted(got) == sorted([f"d{i}" for i in range(10)] + ["d-bad"])
    assert isinstance(got["d-bad"], ShapeError)
    direct = onnx_direct(onnx_model_dir, xs)
    for i in range(10):
        assert_top_n(got[f"d{i}"], direct[i], 3)
    assert output.dequeue() == {}


def test_query_without_result_returns_none_and_predict_times_out(client, output) -> None:
    assert output.query("nothing-here") is None
    start = time.monotonic()
    assert output.query("nothing-here", timeout=0.3) is None
    with pytest.raises(ResultTimeoutError):
        client.predict(np.zeros((3, 32, 32), np.float32), timeout=0.5)
    elapsed = time.monotonic() - start
    assert 0.7 <= elapsed < 3.0, elapsed  # the timeouts bound the whole wait


def test_expired_deadline_is_an_error_without_running(onnx_model_dir, serve, client, output):
    from zoo_serving.errors import DeadlineExceededError

    client.enqueue("late", deadline_s=-1.0, t=np.zeros((3, 32, 32), np.float32))
    serve(onnx_model_dir)
    with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
        output.query("late", timeout=30)


def test_result_keys_expire(onnx_model_dir, serve, client, redis_client, stream) -> None:
    serve(onnx_model_dir, **{"data.result_ttl_s": 120})
    client.enqueue("ttl", t=np.zeros((3, 32, 32), np.float32))
    key = keys.result(stream, "ttl")
    deadline = time.monotonic() + 30
    while not redis_client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert 0 < redis_client.pttl(key) <= 120_000
