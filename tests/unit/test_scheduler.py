"""The execution slots' scheduler: when a model's batch is ready, and whose batch runs next."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from zoo_serving.serving.scheduler import Lane, Scheduler


@dataclass
class Rec:
    n: int
    version: int | None = None


def test_a_batch_is_ready_when_full_drained_or_waited_long_enough() -> None:
    sched = Scheduler()
    sched.add(Lane("m", batch_size=4, max_wait_s=0.2))
    sched.offer("m", [Rec(i) for i in range(3)], drained=False)
    assert sched.next_batch(timeout_s=0.05) is None  # 3 of 4, more on the way, not waited
    sched.offer("m", [Rec(3)], drained=False)
    lane, batch = sched.next_batch(timeout_s=0.05)  # type: ignore[misc]
    assert [r.n for r in batch] == [0, 1, 2, 3]
    sched.done(lane, 0.01)
    sched.offer("m", [Rec(4)], drained=True)  # the stream is empty: no point waiting
    assert [r.n for r in sched.next_batch(timeout_s=0.05)[1]] == [4]  # type: ignore[index]
    sched.done(lane, 0.01)
    started = time.monotonic()
    sched.offer("m", [Rec(5)], drained=False)
    got = sched.next_batch(timeout_s=2.0)
    assert got is not None and [r.n for r in got[1]] == [5]
    assert time.monotonic() - started >= 0.19  # it waited max_wait for company


def test_batches_never_mix_versions_and_keep_order() -> None:
    sched = Scheduler()
    sched.add(Lane("m", batch_size=3, max_wait_s=0.0))
    recs = [Rec(0, 1), Rec(1, 2), Rec(2, 1), Rec(3, 1), Rec(4, 2)]
    sched.offer("m", recs, drained=True)
    batches = []
    while (got := sched.next_batch(timeout_s=0.01)) is not None:
        lane, batch = got
        batches.append([(r.n, r.version) for r in batch])
        sched.done(lane, 0.0)
    assert batches == [[(0, 1), (2, 1), (3, 1)], [(1, 2), (4, 2)]]


def run_lanes(weights: dict[str, float], batch_s: dict[str, float], rounds: int) -> dict[str, int]:
    """Every lane always has work; count whose batches the slot runs."""
    sched = Scheduler()
    for name, weight in weights.items():
        sched.add(Lane(name, batch_size=1, max_wait_s=0.0, weight=weight))
        sched.offer(name, [Rec(i) for i in range(rounds)], drained=True)
    runs = dict.fromkeys(weights, 0)
    for _ in range(rounds):
        lane, _batch = sched.next_batch(timeout_s=0.1)  # type: ignore[misc]
        runs[lane.name] += 1
        sched.done(lane, batch_s[lane.name])
    return runs


def test_time_is_shared_by_weight_not_by_batch_count() -> None:
    # equal weights: a model whose batches take 4x longer gets a quarter of the batches
    runs = run_lanes({"heavy": 1.0, "light": 1.0}, {"heavy": 0.004, "light": 0.001}, 100)
    assert runs["light"] == 80 and runs["heavy"] == 20
    # weight 2 gets twice the time of weight 1 at the same cost per batch
    runs = run_lanes({"a": 2.0, "b": 1.0}, {"a": 0.001, "b": 0.001}, 90)
    assert runs == {"a": 60, "b": 30}


def test_an_idle_model_banks_no_credit() -> None:
    sched = Scheduler()
    sched.add(Lane("busy", batch_size=1, max_wait_s=0.0))
    sched.add(Lane("idle", batch_size=1, max_wait_s=0.0))
    sched.offer("busy", [Rec(i) for i in range(50)], drained=True)
    for _ in range(40):
        lane, _ = sched.next_batch(timeout_s=0.1)  # type: ignore[misc]
        sched.done(lane, 0.01)
    # 'idle' now gets work: it shares from here on, it does not get 40 batches in a row
    sched.offer("idle", [Rec(i) for i in range(10)], drained=True)
    order = []
    for _ in range(6):
        lane, _ = sched.next_batch(timeout_s=0.1)  # type: ignore[misc]
        order.append(lane.name)
        sched.done(lane, 0.01)
    assert order.count("busy") >= 2, order


def test_stop_runs_what_is_waiting_then_ends_every_slot() -> None:
    sched = Scheduler()
    sched.add(Lane("m", batch_size=8, max_wait_s=60.0))
    sched.offer("m", [Rec(i) for i in range(3)], drained=False)
    results: list[object] = []

    def slot() -> None:
        while (got := sched.next_batch()) is not None:
            results.append([r.n for r in got[1]])
            sched.done(got[0], 0.0)
        results.append("end")

    threads = [threading.Thread(target=slot) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    sched.stop()
    for t in threads:
        t.join(5)
    assert results.count("end") == 2 and [0, 1, 2] in results


def test_a_removed_lane_hands_back_what_it_held() -> None:
    sched = Scheduler()
    sched.add(Lane("m", batch_size=8, max_wait_s=60.0))
    sched.offer("m", [Rec(1), Rec(2)], drained=False)
    assert [r.n for r in sched.remove("m")] == [1, 2]
    assert not sched.offer("m", [Rec(3)], drained=True)
