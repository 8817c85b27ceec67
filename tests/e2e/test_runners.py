"""Every runner serves the same load with the same answers; a worker killed mid-run under the
processes and ray runners loses nothing.

Runners: threads, processes (2 worker processes), ray with a local Ray (2 actors), and ray
against a cluster this module starts with ``ray start --head`` on loopback (2 actors). The model
is the small CNN of ``conftest.py``; answers are compared with ONNX Runtime's own.

Ray keeps process-wide state: a local ``ray.init`` switches the process to token
authentication for good, after which it cannot run actors on a cluster without it. So the
local-Ray server runs in its own process (``zoo-serve start --foreground --runner ray``), and
this process joins only the test cluster, which runs without token authentication.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cluster import Plane
from helpers import (
    HANG,
    NOT_A_JPEG,
    assert_observed,
    assert_top_n,
    build_sentinel_model,
    onnx_direct,
    scrape_when,
    sentinel_direct,
    summary_scalars,
)
from zoo_serving import InputQueue, OutputQueue, Server, keys
from zoo_serving.broker.embedded import free_port
from zoo_serving.cli import main as zoo_serve
from zoo_serving.errors import BatchTimeoutError, DecodeError, ModelNotFoundError
from zoo_serving.server import request_stop

pytestmark = pytest.mark.timeout(300)  # Ray starts slowly on a loaded machine

N = 2000
DISTINCT = 40  # distinct tensors, cycled through the records
TOP_N = 3


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    return np.random.default_rng(17).normal(0, 50, (DISTINCT, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def direct(onnx_model_dir: Path, xs: np.ndarray) -> np.ndarray:
    return onnx_direct(onnx_model_dir, xs)


@pytest.fixture(autouse=True)
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray address or auth mode from outside, and the environment restored after each test
    (a local ray.init sets RAY_AUTH_MODE in this process)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)


def server_config(
    model_dir: Path, redis_url: str, stream: str, work: Path, runner: str, **params: Any
) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "params": {"batch_size": 8, "top_n": TOP_N, "runner": runner, "workers": 2, **params},
        "log": {"dir": str(work)},
    }


def one_redis(redis_url: str, redis_client: Any) -> Plane:
    """The session Redis as a data plane (one stream, no partitions)."""
    return Plane("single", redis_url, 1, redis_client)


def run_load(
    plane: Plane,
    stream: str,
    xs: np.ndarray,
    n: int = N,
    during: Callable[[], None] | None = None,
    collect: bool = True,
) -> dict[str, Any]:
    """Enqueue ``n`` records (in a thread); call ``during`` once a fifth is answered, while
    records still arrive; return every result (with ``collect``)."""

    def enqueue() -> None:
        with InputQueue(name=stream, config=plane.client_config()) as client:
            for first in range(0, n, 200):
                client.enqueue_many(
                    (f"r{i}", {"t": xs[i % DISTINCT]}) for i in range(first, min(n, first + 200))
                )

    sender = threading.Thread(target=enqueue)
    sender.start()
    try:
        if during is not None:
            deadline = time.monotonic() + 60
            while plane.finished_count(stream) < n // 5:
                assert time.monotonic() < deadline, "the load did not start"
                time.sleep(0.002)
            during()
            assert plane.finished_count(stream) < n, "the load ended before `during`"
    finally:
        sender.join()
    if not collect:
        return {}
    with OutputQueue(name=stream, config=plane.client_config()) as output:
        return output.query_many([f"r{i}" for i in range(n)], timeout=120)


def start_cli_server(
    work: Path, raw: dict[str, Any], runner: str, redis_client: Any, stream: str
) -> subprocess.Popen[bytes]:
    """`zoo-serve start --foreground --runner <runner>` in its own process, once its 2 workers
    are ready; its output goes to ``work/server.log``."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    log_path = work / "server.log"
    cmd = [sys.executable, "-m", "zoo_serving", "start", "--foreground", "-c", str(config_path)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--runner", runner],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while len(live_beats(redis_client, stream, 2, timeout_s=0.5)) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_cli_server(proc)
            pytest.fail(f"server did not get ready:\n{log_path.read_text()[-3000:]}")
    return proc


def stop_cli_server(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (what `zoo-serve stop` sends): drain, then exit; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def pending_of(plane: Plane, stream: str, consumer: str) -> int:
    """Records delivered to ``consumer`` and not acknowledged, over the partitions."""
    return sum(
        int(info["pending"])
        for part in plane.parts(stream)
        for info in plane.db.xinfo_consumers(part, "serving")
        if info["name"].decode() == consumer
    )


def stop_while_holding(pid: int, held: Callable[[], int], timeout_s: float = 30) -> int:
    """Freeze process ``pid`` (SIGSTOP) at a moment ``held()`` records are delivered to it and
    not acknowledged, and return that count: a frozen worker cannot acknowledge, so a kill
    that follows leaves exactly those records behind (a kill between two batches would
    leave none, and prove nothing about taking them over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        os.kill(pid, signal.SIGSTOP)
        count = held()
        if count > 0:
            return count
        os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"pid {pid} never held a record"
        time.sleep(0.003)


def check_results(
    results: dict[str, Any],
    plane: Plane,
    stream: str,
    direct: np.ndarray,
    n: int = N,
    others: int = 0,
) -> None:
    """``n`` records r0... answered once each with the framework's answer (and ``others``
    records besides)."""
    assert len(results) == n  # none lost
    finished = Counter(plane.finished(stream))
    assert len(finished) == n + others and set(finished.values()) == {1}  # once each
    for i in range(n):
        assert_top_n(results[f"r{i}"], direct[i % DISTINCT], TOP_N)
    assert plane.queued(stream) == 0
    assert plane.pending(stream) == 0


def live_beats(redis_client: Any, stream: str, count: int, timeout_s: float = 10) -> list[dict]:
    """The heartbeats of ``count`` ready workers, as ``zoo-serve status`` reads them."""
    deadline = time.monotonic() + timeout_s
    while True:
        beats = [json.loads(b) for b in redis_client.hvals(keys.workers(stream))]
        live = [b for b in beats if b["ready"] and time.time() - b["ts"] < 5]
        if len(live) >= count or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def send_bad(redis_url: str, stream: str) -> dict[str, str]:
    """Records that fail decoding in the workers; their uris and error code, once answered."""
    bad = {f"bad-{i}": DecodeError.code for i in range(3)}
    with InputQueue(url=redis_url, name=stream) as client:
        client.enqueue_many((uri, {"t": NOT_A_JPEG}) for uri in bad)
    with OutputQueue(url=redis_url, name=stream) as output:
        answers = output.query_many(list(bad), timeout=60)
    assert all(isinstance(answers[uri], DecodeError) for uri in bad), answers
    return bad


@pytest.mark.parametrize("runner", ["threads", "processes", "ray-local", "ray-cluster"])
def test_each_runner_serves_2000_records_once_each_with_the_frameworks_answers(
    runner, request, tmp_path, onnx_model_dir, redis_url, redis_client, stream, xs, direct
) -> None:
    """... and feeds the same observability: /metrics (unlabelled series, workers), the
    TensorBoard scalars and the error log, from workers in any process."""
    name = runner.partition("-")[0]
    work = tmp_path / "work"
    raw = server_config(onnx_model_dir, redis_url, stream, work, name)
    port = free_port()
    raw["log"].update({"summary": True, "metrics_port": port})
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    if runner == "ray-local":  # its own process (see the module docstring), through the CLI
        raw["params"]["runner"] = "threads"  # --runner overrides it
        proc = start_cli_server(work, raw, name, redis_client, stream)
        try:
            results = run_load(one_redis(redis_url, redis_client), stream, xs)
            beats = live_beats(redis_client, stream, 2)
            bad = send_bad(redis_url, stream)
            sample = scrape_when(metrics_url, N, {DecodeError.code: len(bad)}, workers=2)
        finally:
            code = stop_cli_server(proc)
        assert code == 0  # drained and stopped on SIGTERM
    else:
        if runner == "ray-cluster":
            raw["ray"] = {"address": request.getfixturevalue("ray_head")}
        server = Server(raw)
        try:
            server.start(timeout_s=120)
            assert server.runner is not None and server.runner.name == name
            results = run_load(one_redis(redis_url, redis_client), stream, xs)
            beats = live_beats(redis_client, stream, 2)
            bad = send_bad(redis_url, stream)
            sample = scrape_when(metrics_url, N, {DecodeError.code: len(bad)}, workers=2)
        finally:
            server.stop()
    check_results(results, one_redis(redis_url, redis_client), stream, direct, others=len(bad))
    assert not redis_client.exists(keys.ready(stream))  # every worker stopped and said so
    assert not redis_client.hlen(keys.workers(stream))
    error_log = (work / "error.log").read_text()
    assert_observed(sample, summary_scalars(work), error_log, N, bad, workers=2)
    if name == "threads":
        return
    # the workers live in other processes, each one announced with its host and pid
    assert len(beats) == 2 and {b["runner"] for b in beats} == {name}
    assert len({b["pid"] for b in beats}) == 2 and os.getpid() not in {b["pid"] for b in beats}
    for beat in beats:  # ... and wrote its own lines into the error log
        assert f"[{beat['pid']}] zoo_serving." in error_log, beat["pid"]


def test_ray_serves_a_redis_cluster_with_3_partitions(
    tmp_path, onnx_model_dir, redis_cluster, stream, xs, direct, ray_head
) -> None:
    """The Ray runner's actors on a Redis Cluster, the stream split in 3 partitions: every
    record answered once with ONNX Runtime's answer, spread over the partitions, nothing
    left pending."""
    from zoo_serving.broker.connection import connect
    from zoo_serving.config import DataConfig

    plane = Plane("cluster-p3", redis_cluster.url, 3, connect(DataConfig(src=redis_cluster.url)))
    try:
        raw = server_config(onnx_model_dir, plane.url, stream, tmp_path / "work", "ray")
        raw["data"]["partitions"] = plane.partitions
        raw["ray"] = {"address": ray_head}
        with Server(raw):
            results = run_load(plane, stream, xs, N)
        check_results(results, plane, stream, direct, N)
        per_part = [plane.db.llen(keys.finished(p)) for p in plane.parts(stream)]
        assert min(per_part) > N / 3 / 2, per_part
    finally:
        plane.db.close()


def test_status_lists_the_worker_processes(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream, capsys
) -> None:
    raw = server_config(onnx_model_dir, redis_url, stream, tmp_path / "work", "processes")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    with Server(raw) as server:
        pids = set(server.runner.pids)  # type: ignore[union-attr]
        with InputQueue(url=redis_url, name=stream) as client:
            assert client.predict(np.ones((3, 32, 32), np.float32), timeout=30)
        deadline = time.monotonic() + 10  # counts reach the hash with the next beat (1 s)
        while sum(b["succeeded"] for b in live_beats(redis_client, stream, 2)) < 1:
            assert time.monotonic() < deadline, "the served record never reached status"
            time.sleep(0.1)
        capsys.readouterr()
        assert zoo_serve(["status", "--json", "-c", str(config_path)]) == 0
        status = json.loads(capsys.readouterr().out)
    workers = status["workers"]
    assert {w["pid"] for w in workers} == pids and len(pids) == 2
    assert all(w["host"] and w["runner"] == "processes" for w in workers)
    assert sum(w["succeeded"] for w in workers) == 1


def test_processes_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost(
    tmp_path, onnx_model_dir, plane, stream, xs, direct
) -> None:
    n = 4 * N
    raw = server_config(
        onnx_model_dir, plane.url, stream, tmp_path / "work", "processes", claim_idle_ms=1000
    )
    raw["data"]["partitions"] = plane.partitions
    killed: list[int] = []
    orphaned: list[int] = []

    def kill_one() -> None:
        pid = server.runner.pids[0]  # type: ignore[union-attr]
        consumer = f"{socket.gethostname()}-{pid}-1"
        orphaned.append(stop_while_holding(pid, lambda: pending_of(plane, stream, consumer)))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with Server(raw) as server:
        results = run_load(plane, stream, xs, n, during=kill_one)
        runner: Any = server.runner
        assert runner.wait_ready(60), "the killed worker was not replaced"
        assert runner.restarts == 1
        assert len(runner.pids) == 2 and killed[0] not in runner.pids
    assert orphaned[0] > 0  # the dead worker held records: the others took them over
    check_results(results, plane, stream, direct, n)


def test_ray_an_actor_killed_mid_run_loses_nothing(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream, xs, direct, ray_head
) -> None:
    import ray

    n = 4 * N
    raw = server_config(
        onnx_model_dir, redis_url, stream, tmp_path / "work", "ray", claim_idle_ms=1000
    )
    raw["ray"] = {"address": ray_head}
    orphaned: list[int] = []

    def kill_one() -> None:
        runner: Any = server.runner
        info = runner.workers_info[0]
        plane = one_redis(redis_url, redis_client)
        orphaned.append(
            stop_while_holding(info["pid"], lambda: pending_of(plane, stream, info["name"]))
        )
        ray.kill(runner.actors[0])
        os.kill(info["pid"], signal.SIGKILL)  # frozen, it cannot take Ray's word to go

    with Server(raw) as server:
        results = run_load(one_redis(redis_url, redis_client), stream, xs, n, during=kill_one)
        assert server.runner is not None and server.runner.alive  # the other one serves on
    assert orphaned[0] > 0  # the dead actor held records: the other took them over
    check_results(results, one_redis(redis_url, redis_client), stream, direct, n)


def runner_config(runner: str, request: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` for ``processes`` or ``ray-cluster`` (the module's Ray head)."""
    raw["params"]["runner"] = runner.partition("-")[0]
    if runner == "ray-cluster":
        raw["ray"] = {"address": request.getfixturevalue("ray_head")}
    return raw


@pytest.mark.parametrize("runner", ["processes", "ray-cluster"])
def test_a_model_that_does_not_load_fails_start_with_the_workers_error(
    runner, request, tmp_path, redis_url, stream
) -> None:
    raw = server_config(tmp_path / "nope", redis_url, stream, tmp_path / "work", runner)
    server = Server(runner_config(runner, request, raw))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        server.start(timeout_s=60)
    assert server.runner is None  # stopped and released


@pytest.mark.parametrize("runner", ["processes", "ray-cluster"])
def test_stop_mid_load_drains_what_was_read_and_leaves_the_rest_queued(
    runner, request, tmp_path, onnx_model_dir, redis_url, redis_client, stream, xs
) -> None:
    n = 4 * N
    raw = server_config(onnx_model_dir, redis_url, stream, tmp_path / "work", runner)
    raw["log"]["summary"] = True
    server = Server(runner_config(runner, request, raw)).start(timeout_s=120)
    plane = one_redis(redis_url, redis_client)
    run_load(plane, stream, xs, n, during=lambda: server.stop(30), collect=False)
    answered = redis_client.llen(keys.finished(stream))
    queued = redis_client.xlen(stream)
    assert redis_client.xpending(stream, "serving")["pending"] == 0  # nothing read and dropped
    assert answered + queued == n and queued > 0
    assert not redis_client.exists(keys.ready(stream))
    # the drain, after the workers' last beats, is in the summary: their final counts
    assert summary_scalars(tmp_path / "work")["Total Records Number"][-1] == answered


def test_a_stop_request_ends_the_worker_processes_without_restarts(
    tmp_path, onnx_model_dir, redis_url, stream
) -> None:
    raw = server_config(onnx_model_dir, redis_url, stream, tmp_path / "work", "processes")
    with Server(raw) as server:
        runner: Any = server.runner
        assert request_stop(server.config)  # what `zoo-serve stop` writes for remote workers
        assert server.wait(30)
        assert runner.restarts == 0 and not server.running


def test_ray_an_actor_stuck_on_a_hanging_record_is_replaced(
    tmp_path, redis_url, redis_client, stream, ray_head
) -> None:
    # a real TorchScript model that spins for good on a HANG record: only killing stops it
    model_dir = build_sentinel_model(tmp_path / "hang" / "m.pt", hang_iters=2**62).parent
    xs = np.random.default_rng(41).normal(0, 50, (4, 3, 32, 32)).astype(np.float32)
    xs[1, 0, 0, 0] = HANG
    raw = server_config(
        model_dir,
        redis_url,
        stream,
        tmp_path / "work",
        "ray",
        claim_idle_ms=500,
        batch_timeout_s=1.0,
        batch_size=4,
        max_wait_ms=1000,
        threads=1,
    )
    raw["ray"] = {"address": ray_head}
    with Server(raw) as server:
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"h{i}", {"t": xs[i]}) for i in range(4))
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"h{i}" for i in range(4)], timeout=240)
        runner: Any = server.runner
        deadline = time.monotonic() + 60
        while runner.restarts < 1:  # the actor left in the model call is replaced
            assert time.monotonic() < deadline, "the stuck actor was not replaced"
            time.sleep(0.1)
        assert runner.wait_ready(180)  # and its replacement serves
    assert isinstance(results.pop("h1"), BatchTimeoutError)
    direct = sentinel_direct(model_dir, np.delete(xs, 1, axis=0))
    for j, i in enumerate((0, 2, 3)):
        assert_top_n(results[f"h{i}"], direct[j], TOP_N)


def test_ray_a_swap_under_load_with_an_actor_killed_loses_nothing(
    tmp_path, redis_url, redis_client, stream, ray_head
) -> None:
    import ray

    from helpers import SwapUnderLoad

    swap = SwapUnderLoad(tmp_path / "models", redis_url, stream)
    raw = swap.config(tmp_path / "work", "ray")
    raw["ray"] = {"address": ray_head}
    with Server(raw) as server:
        swap.run(server, lambda: ray.kill(server.runner.actors[0]))  # type: ignore[union-attr]
    swap.check(redis_client)
