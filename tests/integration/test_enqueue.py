"""Records go in exactly once: a connection dropped mid-send, a resent add, Redis out of
memory."""

from __future__ import annotations

import collections
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis as redis_lib

from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, QueueFullError, keys
from zoo_serving.broker.producer import Outgoing, StreamProducer
from zoo_serving.wire import native


class Killer:
    """Kills the Redis connections named ``name`` from another connection, over and over,
    a few milliseconds apart, while the test sends."""

    def __init__(self, url: str, name: str) -> None:
        self.admin = redis_lib.Redis.from_url(url)
        self.name = name
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        while not self._stop.is_set():
            for info in self.admin.client_list():
                if info.get("name") == self.name:
                    try:
                        self.admin.client_kill_filter(_id=info["id"])
                        self.kills += 1
                    except redis_lib.ResponseError:  # it was gone already
                        pass
            self._stop.wait(0.003 + 0.02 * rng.random())

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.admin.close()


def stream_uris(redis_client: Any, stream: str) -> collections.Counter[bytes]:
    return collections.Counter(fields[b"uri"] for _, fields in redis_client.xrange(stream))


def test_dropped_connections_add_every_record_once_and_answer_it_once(
    onnx_model_dir, serve, redis_url, redis_client, stream, output
) -> None:
    n_many, n_single = 2000, 300
    xs = np.random.default_rng(1).normal(0, 50, (20, 3, 32, 32)).astype(np.float32)
    uris = [f"k{i}" for i in range(n_many + n_single)]
    with (
        InputQueue(url=redis_url, name=stream, client_name="victim") as client,
        Killer(redis_url, "victim") as killer,
    ):
        for start in range(0, n_many, 100):
            client.enqueue_many((uris[i], {"t": xs[i % 20]}) for i in range(start, start + 100))
        for i in range(n_many, n_many + n_single):
            client.enqueue(uris[i], t=xs[i % 20])
    assert killer.kills >= 10, killer.kills  # the connection did drop, many times
    counts = stream_uris(redis_client, stream)
    assert sorted(counts) == sorted(u.encode() for u in uris)
    assert set(counts.values()) == {1}, [u for u, c in counts.items() if c > 1][:10]

    serve(onnx_model_dir, **{"params.batch_size": 8})
    results = output.query_many(uris, timeout=120)
    assert len(results) == len(uris)
    direct = onnx_direct(onnx_model_dir, xs)
    for i, uri in enumerate(uris):
        assert_top_n(results[uri], direct[i % 20], 3)
    answered = redis_client.lrange(keys.finished(stream), 0, -1)
    assert collections.Counter(answered) == collections.Counter(u.encode() for u in uris)
    assert redis_client.xlen(stream) == 0


def _outgoing(uris: list[str]) -> list[Outgoing]:
    x = np.zeros(4, np.float32)
    return [Outgoing(native.encode_request(u, {"t": x}), u) for u in uris]


def test_a_resent_add_adds_nothing_twice(redis_client, stream) -> None:
    producer = StreamProducer(redis_client, stream)
    records = _outgoing(["a", "b", "c"])
    assert producer.add(records).count == 3
    again = producer.add(records)  # what redis-py does when the reply was lost
    assert (again.count, again.why, again.length) == (3, "", 3)
    more = _outgoing(["d", "e"])  # new records: numbered after those
    assert producer.add(more).count == 2
    assert list(stream_uris(redis_client, stream).elements()) == [b"a", b"b", b"c", b"d", b"e"]


def test_a_resent_add_under_the_bound_completes_what_did_not_fit(redis_client, stream) -> None:
    redis_client.set(keys.max_len(stream), 2)
    producer = StreamProducer(redis_client, stream)
    records = _outgoing(["a", "b", "c"])
    first = producer.add(records)
    assert (first.count, first.why, first.bound) == (2, "full", 2)
    redis_client.set(keys.max_len(stream), 5)  # room again: the resend adds only the third
    again = producer.add(records)
    assert (again.count, again.why, again.length) == (3, "", 3)
    assert list(stream_uris(redis_client, stream).elements()) == [b"a", b"b", b"c"]


def test_threads_of_one_queue_are_producers_of_their_own(redis_url, redis_client, stream):
    """Numbers of one producer must reach Redis in order; two threads sending through one
    InputQueue (as the HTTP door does) cannot promise that, so each has its own."""
    x = np.zeros(4, np.float32)
    with InputQueue(url=redis_url, name=stream) as client:

        def send(tag: str) -> None:
            for i in range(50):
                client.enqueue_many((f"{tag}{i}-{j}", {"t": x}) for j in range(3))

        threads = [threading.Thread(target=send, args=(t,)) for t in "abcd"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(stream_uris(redis_client, stream).values()) == 4 * 50 * 3
    assert len(redis_client.keys(keys.producer(stream, "*"))) == 4


@pytest.fixture
def small_maxmemory(redis_client: Any) -> Iterator[int]:
    """Redis with maxmemory 16 MB above what it uses now (restored after the test)."""
    limit = int(redis_client.info("memory")["used_memory"]) + 16_000_000
    redis_client.config_set("maxmemory", limit)
    try:
        yield limit
    finally:
        redis_client.config_set("maxmemory", 0)


def test_redis_out_of_memory_is_queue_full_naming_what_went_in(
    small_maxmemory, client, redis_client, stream
) -> None:
    x = np.ones((16, 1024), np.float32)  # 64 KB a record: about 250 fit
    with pytest.raises(QueueFullError, match="Redis is out of memory.*maxmemory") as info:
        client.enqueue_many((f"m{i}", {"t": x}) for i in range(1000))
    accepted = info.value.details["accepted"]
    assert 0 < len(accepted) < 1000
    assert [u.decode() for u in stream_uris(redis_client, stream).elements()] == accepted
    with pytest.raises(QueueFullError, match="out of memory") as one:
        client.enqueue("m-last", t=np.ones((2048, 1024), np.float32))  # 8 MB
    assert one.value.details["accepted"] == []
    assert redis_client.xlen(stream) == len(accepted)
