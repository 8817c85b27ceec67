"""A Redis Cluster master killed (kill -9) while records flow: its replica is promoted, the
workers and the clients follow the new topology, and every record a client was told is in
gets exactly one result, the framework's."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cluster import LocalCluster, Plane, tools_missing
from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, OutputQueue, Server
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


@pytest.mark.parametrize("replica_acks", [1, 0])
def test_a_master_killed_under_load_loses_no_accepted_record(
    own_cluster, onnx_model_dir, tmp_path, replica_acks, caplog
) -> None:
    stream = "failover"
    partitions = 3
    db = connect(DataConfig(src=own_cluster.url))
    plane = Plane("failover", own_cluster.url, partitions, db)
    data = {**plane.data(stream), "shape": "3,32,32", "replica_acks": replica_acks}
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": data,
        "params": {"batch_size": 8, "top_n": 3, "workers": 2, "claim_idle_ms": 1000},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(3).normal(0, 50, (30, 3, 32, 32)).astype(np.float32)
    accepted: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    client_config = {"data": {**plane.client_config()["data"], "replica_acks": replica_acks}}

    def send() -> None:
        try:
            with InputQueue(name=stream, config=client_config) as client:
                for start in range(0, N, CHUNK):
                    chunk = [(f"f{i}", {"t": xs[i % 30]}) for i in range(start, start + CHUNK)]
                    try:
                        accepted.extend(client.enqueue_many(chunk))
                    except QueueError as exc:  # in, but not confirmed on a replica
                        accepted.extend(exc.details["accepted"])
                        refused.extend(u for u, _ in chunk if u not in exc.details["accepted"])
                    time.sleep(0.01)  # a flow, not one burst: the kill lands mid-way
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    with Server(raw):
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while plane.finished_count(stream) < N // 4:
            assert time.monotonic() < deadline, "records do not flow"
            time.sleep(0.01)
        victim = own_cluster.master_of(stream)  # partition 0's master, where presence lives
        killed_at = plane.finished_count(stream)
        # a worker's own records, acknowledged while it WAITs for a replica, are not lost to
        # another worker: nothing was taken over before the kill
        assert not [r for r in caplog.records if "taken over by other" in r.getMessage()]
        own_cluster.kill(victim)
        time.sleep(NODE_DOWN_S)
        own_cluster.wait_ok()  # a replica took over its slots
        own_cluster.restart(victim)  # it comes back as a replica: WAIT has a replica again
        sender.join(180)
        assert not sender.is_alive() and not errors, errors
        with OutputQueue(name=stream, config=plane.client_config()) as output:
            results = output.query_many(accepted, timeout=120)
    lost = len(accepted) - len(results)
    print(  # the figures of docs/scaling.md
        f"\nreplica_acks={replica_acks}: {len(accepted)} accepted, {len(refused)} refused "
        f"(unconfirmed), {lost} accepted records lost, killed at {killed_at} answered"
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
