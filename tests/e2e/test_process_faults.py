"""Whole worker processes dying or being told to stop in the middle of a load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import redis as redis_lib
import yaml

from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, OutputQueue, keys


def start_worker(
    tmp_path: Path, name: str, model_dir: Path, redis_url: str, stream: str, **params: object
) -> subprocess.Popen[bytes]:
    """A server process (one worker) serving ``stream``, like `zoo-serve start --foreground`."""
    work = tmp_path / name
    work.mkdir()
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "params": {"batch_size": 8, "top_n": 3, "claim_idle_ms": 1000, **params},
        "log": {"dir": str(work)},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zoo_serving",
            "start",
            "--foreground",
            "-c",
            str(work / "config.yaml"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_workers(client: redis_lib.Redis, stream: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.hlen(keys.workers(stream)) < count or not client.exists(keys.ready(stream)):
        assert time.monotonic() < deadline, "workers did not get ready"
        time.sleep(0.05)
    time.sleep(1.2)  # every worker has beaten once as ready


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_kill_9_of_a_worker_mid_load_loses_nothing(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream
) -> None:
    n = 10_000
    xs = np.random.default_rng(9).normal(0, 50, (40, 3, 32, 32)).astype(np.float32)
    victim = start_worker(tmp_path, "victim", onnx_model_dir, redis_url, stream)
    survivor = start_worker(tmp_path, "survivor", onnx_model_dir, redis_url, stream)
    try:
        wait_workers(redis_client, stream, 2)
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"k{i}", {"t": xs[i % 40]}) for i in range(n))
        deadline = time.monotonic() + 60
        while redis_client.llen(keys.finished(stream)) < n // 5:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed_at = redis_client.llen(keys.finished(stream))
        assert killed_at < n, "the load finished before the kill; make it longer"
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"k{i}" for i in range(n)], timeout=120)
    finally:
        stop(victim)
        stop(survivor)
    assert len(results) == n  # none lost
    finished = Counter(redis_client.lrange(keys.finished(stream), 0, -1))
    assert len(finished) == n and set(finished.values()) == {1}  # one result each, never two
    direct = onnx_direct(onnx_model_dir, xs)
    for i in range(n):
        assert_top_n(results[f"k{i}"], direct[i % 40], 3)
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert survivor.returncode == 0


def test_sigterm_drains_what_was_read_and_leaves_the_rest_queued(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream
) -> None:
    n = 3000
    worker = start_worker(tmp_path, "w", onnx_model_dir, redis_url, stream)
    x = np.ones((3, 32, 32), np.float32)
    try:
        wait_workers(redis_client, stream, 1)
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"t{i}", {"t": x}) for i in range(n))
        while redis_client.llen(keys.finished(stream)) < 200:
            time.sleep(0.005)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        stop(worker)
    answered = redis_client.llen(keys.finished(stream))
    queued = redis_client.xlen(stream)
    assert redis_client.xpending(stream, "serving")["pending"] == 0  # nothing read and dropped
    assert answered + queued == n and queued > 0
    assert not redis_client.exists(keys.ready(stream))
