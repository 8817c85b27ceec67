"""The Redis Streams queue's hold on the entries a consumer has in its pipeline, against a
real Redis: refreshed entries never look idle, a consumer never takes over or re-reads what it
still holds, and released entries come back as redeliveries."""

from __future__ import annotations

import threading
import time

import pytest

from zoo_serving import keys
from zoo_serving.broker.connection import connect
from zoo_serving.broker.queue import Completion, Entry
from zoo_serving.broker.streams import RedisStreamQueue


@pytest.fixture
def queues(redis_url, stream):
    """``queues(name)``: a consumer of the group on ``stream``, with its own connection that,
    like a worker's, does not resend a command whose connection was lost."""
    made: list[RedisStreamQueue] = []

    def make(name: str, claim_idle_ms: int = 200) -> RedisStreamQueue:
        client = connect(url=redis_url, retries=0)
        queue = RedisStreamQueue(client, stream, consumer=name, claim_idle_ms=claim_idle_ms)
        queue.setup()
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


def add(redis_client, stream: str, n: int) -> list[bytes]:
    return [redis_client.xadd(stream, {"uri": f"r{i}", "zs": "1"}) for i in range(n)]


def pending_of(redis_client, stream: str) -> dict[bytes, tuple[bytes, int, int]]:
    """id -> (consumer, idle ms, deliveries)."""
    rows = redis_client.xpending_range(stream, "serving", "-", "+", 100)
    return {
        r["message_id"]: (r["consumer"], r["time_since_delivered"], r["times_delivered"])
        for r in rows
    }


def test_refresh_keeps_held_entries_fresh_and_reports_those_taken_over(
    queues, redis_client, stream
) -> None:
    a, b = queues("a"), queues("b")
    ids = add(redis_client, stream, 3)
    assert [e.id for e in a.read(10, block_ms=10)] == ids
    time.sleep(0.3)  # idle past b's claim_idle_ms
    redis_client.xclaim(stream, "serving", "b", 0, [ids[2]], justid=True)  # b took one over
    assert a.refresh() == [ids[2]]
    pending = pending_of(redis_client, stream)
    assert pending[ids[0]][0] == b"a" and pending[ids[0]][1] < 200
    assert pending[ids[1]][0] == b"a" and pending[ids[1]][1] < 200
    assert pending[ids[2]][0] == b"b"  # not taken back
    assert [pending[i][2] for i in ids[:2]] == [1, 1]  # refreshing counts no delivery
    assert a.holds(a_entry(ids[0])) and not a.holds(a_entry(ids[2]))
    # b gets what it took over (its own pending list), nothing of a's: none looks idle
    assert [e.id for e in b.read(10, block_ms=10)] == [ids[2]]
    assert b.read(10, block_ms=10) == []


def test_a_consumer_never_takes_over_what_it_holds(queues, redis_client, stream) -> None:
    a = queues("a", claim_idle_ms=100)
    ids = add(redis_client, stream, 2)
    assert len(a.read(10, block_ms=10)) == 2
    time.sleep(0.25)  # idle past claim_idle_ms, never refreshed
    assert a.read(10, block_ms=10) == []  # idle, but still in its pipeline: not taken over
    a.release([a_entry(ids[0])])
    time.sleep(0.25)
    (again,) = a.read(10, block_ms=10)  # a released entry comes back as a redelivery
    assert again.id == ids[0] and again.deliveries >= 2


def test_rereading_own_pending_after_a_lost_reply_skips_held_entries(
    queues, redis_client, stream
) -> None:
    a = queues("a", claim_idle_ms=60_000)
    held = add(redis_client, stream, 2)
    assert [e.id for e in a.read(2, block_ms=10)] == held
    # a read whose reply is lost with the connection: the next read re-reads a's pending list
    failed: list[BaseException] = []

    def blocked_read() -> None:
        try:
            a.read(2, block_ms=5000)
        except Exception as exc:
            failed.append(exc)

    reader = threading.Thread(target=blocked_read)
    reader.start()
    time.sleep(0.5)  # XREADGROUP is blocked in Redis
    redis_client.client_kill_filter(_type="normal", skipme=True)
    reader.join(10)
    assert failed, "the read did not lose its connection"
    fresh = add(redis_client, stream, 1)
    got = a.read(2, block_ms=10) or a.read(2, block_ms=10)
    assert [e.id for e in got] == fresh  # the held two are not handed out a second time


def a_entry(entry_id: bytes) -> Entry:
    return Entry(entry_id, {})


def test_idle_entries_are_taken_over_one_at_a_time(queues, redis_client, stream) -> None:
    a = queues("a", claim_idle_ms=100)
    ids = add(redis_client, stream, 3)
    redis_client.xreadgroup("serving", "ghost", {stream: ">"}, count=3)  # read, then died
    time.sleep(0.25)
    (first,) = a.read(10, block_ms=10)
    assert first.id == ids[0] and first.deliveries == 2
    # while it holds a record taken over, it takes over no other: that record may be the one
    # that kills workers, and whatever it kills with it is redelivered once more
    assert a.read(10, block_ms=10) == []
    fresh = add(redis_client, stream, 1)
    assert [e.id for e in a.read(10, block_ms=10)] == fresh  # new records still flow
    done = Completion(first, b"r0", b"answer", keys.result(stream, "r0"))
    assert a.complete([done]) == 1
    assert [e.id for e in a.read(10, block_ms=10)] == [ids[1]]
    assert pending_of(redis_client, stream)[ids[2]][0] == b"ghost"
