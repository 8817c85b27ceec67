"""A Redis Cluster master, or the master behind Sentinel, killed (kill -9) while records
flow: its replica is promoted, the workers and the clients follow the new topology, and every
record a client was told is in gets exactly one result, the framework's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cluster import LocalCluster, LocalSentinel, Plane, tools_missing
from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, OutputQueue, Server
from zoo_serving.aio import AsyncInputQueue
from zoo_serving.broker.connection import connect
from zoo_serving.config import DataConfig
from zoo_serving.errors import QueueError

N = 3000
CHUNK = 50
NODE_DOWN_S = 0.5  # the kill is seen: cluster_state moves before wait_ok looks


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test's own: the test kills one of its masters."""
    missing = tools_missing()
    if missing:
        pytest.skip(f"no Redis Cluster: {missing}")
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def own_sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A master, a replica and three sentinels of this test's own."""
    missing = tools_missing()
    if missing:
        pytest.skip(f"no Sentinel set-up: {missing}")
    sentinel = LocalSentinel(tmp_path / "sentinel")
    try:
        yield sentinel.start()
    finally:
        sentinel.stop()


def kill_cluster_master(cluster: LocalCluster, stream: str) -> None:
    victim = cluster.master_of(stream)  # partition 0's master, where presence lives
    cluster.kill(victim)
    time.sleep(NODE_DOWN_S)
    cluster.wait_ok()  # a replica took over its slots
    cluster.restart(victim)  # it comes back as a replica: WAIT has a replica again


def kill_sentinel_master(sentinel: LocalSentinel) -> None:
    victim = sentinel.master_port
    sentinel.kill(victim)
    deadline = time.monotonic() + 60
    while sentinel.master() in (0, victim):
        assert time.monotonic() < deadline, "the sentinels did not fail over"
        time.sleep(0.1)
    sentinel.restart_as_replica(victim, sentinel.master())
    sentinel.wait_ok(sentinel.master())


class Sender:
    """Sends N records f0... in chunks, a flow rather than one burst (so a kill lands mid-way),
    with InputQueue or AsyncInputQueue; notes what was accepted, what was refused (in, but
    not confirmed on a replica), and what went wrong."""

    def __init__(self, stream: str, config: dict[str, Any], xs: np.ndarray) -> None:
        self.stream, self.config, self.xs = stream, config, xs
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.errors: list[BaseException] = []

    def run(self, client: str) -> None:
        try:
            self._sync() if client == "sync" else asyncio.run(self._async())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def _chunks(self) -> Iterator[list[tuple[str, dict[str, np.ndarray]]]]:
        for start in range(0, N, CHUNK):
            yield [(f"f{i}", {"t": self.xs[i % 30]}) for i in range(start, start + CHUNK)]

    def _refused(self, chunk: list[Any], exc: QueueError) -> None:
        self.accepted.extend(exc.details["accepted"])
        self.refused.extend(u for u, _ in chunk if u not in exc.details["accepted"])

    def _sync(self) -> None:
        with InputQueue(name=self.stream, config=self.config) as queue:
            for chunk in self._chunks():
                try:
                    self.accepted.extend(queue.enqueue_many(chunk))
                except QueueError as exc:
                    self._refused(chunk, exc)
                time.sleep(0.01)

    async def _async(self) -> None:
        async with AsyncInputQueue(name=self.stream, config=self.config) as queue:
            for chunk in self._chunks():
                try:
                    self.accepted.extend(await queue.enqueue_many(chunk))
                except QueueError as exc:
                    self._refused(chunk, exc)
                await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("target", "replica_acks", "partitions", "client", "runner"),
    [
        ("cluster", 1, 3, "sync", "threads"),
        ("cluster", 0, 3, "sync", "threads"),
        ("sentinel", 1, 1, "sync", "threads"),
        ("cluster", 1, 3, "asyncio", "threads"),  # its WAIT goes to the node that took the add
        ("sentinel", 1, 1, "asyncio", "threads"),
        ("cluster", 1, 3, "sync", "processes"),  # workers in processes of their own
        ("cluster", 1, 3, "sync", "ray"),  # Ray actors follow the new topology too
    ],
)
def test_a_master_killed_under_load_loses_no_accepted_record(
    target, replica_acks, partitions, client, runner, request, onnx_model_dir, tmp_path, caplog
) -> None:
    stream = "failover"
    setup = request.getfixturevalue(f"own_{target}")
    db = connect(DataConfig(src=setup.url))
    plane = Plane("failover", setup.url, partitions, db)
    data = {**plane.data(stream), "shape": "3,32,32", "replica_acks": replica_acks}
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": data,
        "params": {
            "batch_size": 8,
            "top_n": 3,
            "workers": 2,
            "claim_idle_ms": 1000,
            "runner": runner,
        },
        "log": {"dir": str(tmp_path / "work")},
    }
    if runner == "ray":
        raw["ray"] = {"address": request.getfixturevalue("ray_head")}
    xs = np.random.default_rng(3).normal(0, 50, (30, 3, 32, 32)).astype(np.float32)
    client_config = {"data": {**plane.client_config()["data"], "replica_acks": replica_acks}}

    sender = Sender(stream, client_config, xs)
    with Server(raw):
        thread = threading.Thread(target=sender.run, args=(client,))
        thread.start()
        deadline = time.monotonic() + 60
        while plane.finished_count(stream) < N // 4:
            assert time.monotonic() < deadline, "records do not flow"
            time.sleep(0.01)
        killed_at = plane.finished_count(stream)
        # a worker's own records, acknowledged while it WAITs for a replica, are not lost to
        # another worker: nothing was taken over before the kill
        assert not [r for r in caplog.records if "taken over by other" in r.getMessage()]
        if target == "cluster":
            kill_cluster_master(setup, stream)
        else:
            kill_sentinel_master(setup)
        thread.join(180)
        errors = sender.errors
        assert not thread.is_alive() and not errors, [f"{type(e).__name__}: {e}" for e in errors]
        with OutputQueue(name=stream, config=plane.client_config()) as output:
            results = output.query_many(sender.accepted, timeout=120)
    accepted, refused = sender.accepted, sender.refused
    lost = len(accepted) - len(results)
    print(  # the figures of docs/scaling.md
        f"\n{target}, replica_acks={replica_acks}, {client}, {runner}: {len(accepted)} accepted, "
        f"{len(refused)} refused (unconfirmed), {lost} accepted records lost, "
        f"killed at {killed_at} answered"
    )
    assert killed_at < N, "the load finished before the kill"
    direct = onnx_direct(onnx_model_dir, xs)
    for uri, result in results.items():
        assert_top_n(result, direct[int(uri[1:]) % 30], 3)
    finished = Counter(plane.finished(stream))
    assert all(finished[u.encode()] <= 1 for u in accepted)  # never two results
    if replica_acks:
        assert lost == 0
        assert all(finished[u.encode()] == 1 for u in accepted)
    db.close()
