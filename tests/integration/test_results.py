"""Whose result is whose: what predict() and the HTTP door wait for is theirs alone, and
OutputQueue.dequeue() takes only results of records enqueued by uri."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, OutputQueue, UriInUseError, keys
from zoo_serving.broker.embedded import free_port
from zoo_serving.errors import ShapeError


class Drain:
    """Another client calling ``OutputQueue.dequeue()`` over and over in a thread."""

    def __init__(self, url: str, stream: str) -> None:
        self.queue = OutputQueue(url=url, name=stream)
        self.taken: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.taken.update(self.queue.dequeue())
            self._stop.wait(0.0005)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.taken) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Drain:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.queue.close()


def _xs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, 3, 32, 32)).astype(np.float32)


def test_dequeue_takes_none_of_what_predict_waits_for(
    onnx_model_dir, serve, client, redis_url, redis_client, stream
) -> None:
    xs = _xs(60, 11)
    direct = onnx_direct(onnx_model_dir, xs)
    got: list[Any] = []
    with Drain(redis_url, stream) as drain:
        waiting = threading.Thread(target=lambda: got.extend(client.predict_many(list(xs[:50]))))
        waiting.start()  # records queued before any worker: their results come in a burst
        deadline = time.monotonic() + 30
        while redis_client.xlen(stream) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        serve(onnx_model_dir, **{"params.batch_size": 8})
        waiting.join(60)
        singles = [client.predict(x, timeout=30) for x in xs[50:55]]
        with pytest.raises(ShapeError, match=r"\(3, 16, 16\)"):  # an error comes back privately
            client.predict(np.zeros((3, 16, 16), np.float32), timeout=30)
        client.enqueue_many((f"pub{i}", {"t": xs[i]}) for i in range(55, 60))
        drain.wait_for(5, timeout=30)
    assert sorted(drain.taken) == [f"pub{i}" for i in range(55, 60)]
    for i, result in enumerate(got + singles + [drain.taken[f"pub{i}"] for i in range(55, 60)]):
        assert_top_n(result, direct[i], 3)
    assert redis_client.llen(keys.finished(stream)) == 0  # all five public ones dequeued
    assert redis_client.keys(keys.reply(stream, "*")) == []  # and every reply fetched


@pytest.fixture
def http_door(serve: Any, onnx_model_dir: Any) -> Iterator[Any]:
    import httpx

    config = {"http.port": free_port(), "http.model_name": "cnn", "params.top_n": 0}
    server = serve(onnx_model_dir, **config)
    with httpx.Client(base_url=server.http.url, timeout=30) as door:
        yield door


def test_dequeue_takes_none_of_what_http_callers_wait_for(
    onnx_model_dir, http_door, redis_url, redis_client, stream
) -> None:
    xs = _xs(12, 12)
    direct = onnx_direct(onnx_model_dir, xs)
    with Drain(redis_url, stream) as drain:
        for i in range(0, 12, 3):
            body = {
                "inputs": [
                    {"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32",
                     "data": xs[i : i + 3].ravel().tolist()}
                ]
            }  # fmt: skip
            reply = http_door.post("/v2/models/cnn/infer", json=body)
            assert reply.status_code == 200, reply.text
            (out,) = reply.json()["outputs"]
            scores = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(scores, direct[i : i + 3], rtol=0, atol=1e-5)
        time.sleep(0.2)  # the drain had its chances
    assert drain.taken == {}
    assert redis_client.llen(keys.finished(stream)) == 0


def _result_key_filled(redis_client: Any, stream: str, uri: str) -> None:
    deadline = time.monotonic() + 30
    while not redis_client.exists(keys.result(stream, uri)) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_uri_serves_one_record_at_a_time(
    onnx_model_dir, serve, client, redis_url, redis_client, stream, output
) -> None:
    xs = _xs(4, 13)
    direct = onnx_direct(onnx_model_dir, xs)
    other = InputQueue(url=redis_url, name=stream)
    try:
        client.enqueue("x", t=xs[0])
        claim = keys.uri_claim(stream, "x")
        assert 0 < redis_client.pttl(claim) <= 86_400_000
        with pytest.raises(UriInUseError, match="uri 'x' is in use.*still queued") as info:
            other.enqueue("x", t=xs[1])  # queued: its result key would be shared
        assert info.value.details["accepted"] == []
        serve(onnx_model_dir)
        _result_key_filled(redis_client, stream, "x")
        assert not redis_client.exists(claim)  # answered: the result key holds the uri now
        with pytest.raises(UriInUseError):
            other.enqueue("x", t=xs[1])  # answered, not fetched yet
        assert_top_n(output.query("x", timeout=30), direct[0], 3)
        other.enqueue("x", t=xs[1])  # fetched: the uri is free again
        assert_top_n(output.query("x", timeout=30), direct[1], 3)

        with pytest.raises(UriInUseError) as many:  # twice in one batch: the second is refused
            client.enqueue_many([("y", {"t": xs[2]}), ("z", {"t": xs[3]}), ("y", {"t": xs[3]})])
        assert many.value.details["accepted"] == ["y", "z"]
        got = output.query_many(["y", "z"], timeout=30)
        assert_top_n(got["y"], direct[2], 3)
        assert_top_n(got["z"], direct[3], 3)
    finally:
        other.close()


def test_two_clients_racing_for_uris_never_get_each_others_results(
    onnx_model_dir, serve, redis_url, stream, output
) -> None:
    n = 200
    xs = _xs(2, 14)  # client 0 sends xs[0] for every uri, client 1 xs[1]
    direct = onnx_direct(onnx_model_dir, xs)
    won: dict[int, list[str]] = {0: [], 1: []}

    def send(who: int) -> None:
        with InputQueue(url=redis_url, name=stream) as queue:
            for i in range(n):
                try:
                    queue.enqueue(f"u{i}", t=xs[who])
                    won[who].append(f"u{i}")
                except UriInUseError:
                    pass

    serve(onnx_model_dir)
    senders = [threading.Thread(target=send, args=(who,)) for who in (0, 1)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert not set(won[0]) & set(won[1])  # no uri went in twice
    results = output.query_many(won[0] + won[1], timeout=60)
    assert len(results) == len(won[0]) + len(won[1])
    for who in (0, 1):
        for uri in won[who]:
            assert_top_n(results[uri], direct[who], 3)


def test_writing_a_result_drops_only_the_claim_its_own_record_holds(redis_client, stream):
    """A version-1 record (a deployed older client, which claims nothing) with the same uri
    as a queued newer one must not free the newer one's claim when it is answered."""
    from zoo_serving import wire
    from zoo_serving.broker.queue import Completion
    from zoo_serving.broker.streams import RedisStreamQueue

    queue = RedisStreamQueue(redis_client, stream)
    queue.setup()
    old_id = redis_client.xadd(stream, {"uri": "x", "zs": "1", "image:t": b"\xff"})
    new_id = redis_client.xadd(stream, {"uri": "x", "zs": "2", "image:t": b"\xff"})
    claim = keys.uri_claim(stream, "x")
    redis_client.set(claim, new_id)  # what the newer client's enqueue did
    entries = queue.read(10, block_ms=100)
    assert [e.id for e in entries] == [old_id, new_id]

    def complete(entry: Any) -> None:
        place = wire.result_place(wire.NATIVE, stream, b"x", entry.fields)
        queue.complete([Completion(entry, b"x", b"r", place.key, place.how, place.claim)])

    complete(entries[0])
    assert redis_client.get(claim) == new_id
    complete(entries[1])
    assert not redis_client.exists(claim)
