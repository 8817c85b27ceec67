"""Whole worker processes dying or being told to stop in the middle of a load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cluster import Plane
from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, OutputQueue, keys


def start_worker(
    tmp_path: Path, name: str, model_dir: Path, plane: Plane, stream: str, **params: object
) -> subprocess.Popen[bytes]:
    """A server process (one worker) serving ``stream``, like `zoo-serve start --foreground`."""
    work = tmp_path / name
    work.mkdir()
    config = {
        "model": {"path": str(model_dir)},
        "data": {**plane.data(stream), "shape": "3,32,32"},
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


def wait_workers(client: Any, stream: str, count: int, timeout_s: float = 60) -> None:
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


def test_kill_9_of_a_worker_mid_load_loses_nothing(tmp_path, onnx_model_dir, plane, stream) -> None:
    n = 10_000
    db = plane.db
    xs = np.random.default_rng(9).normal(0, 50, (40, 3, 32, 32)).astype(np.float32)
    victim = start_worker(tmp_path, "victim", onnx_model_dir, plane, stream)
    survivor = start_worker(tmp_path, "survivor", onnx_model_dir, plane, stream)
    try:
        wait_workers(db, stream, 2)
        with InputQueue(name=stream, config=plane.client_config()) as client:
            client.enqueue_many((f"k{i}", {"t": xs[i % 40]}) for i in range(n))
        deadline = time.monotonic() + 60
        while plane.finished_count(stream) < n // 5:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed_at = plane.finished_count(stream)
        assert killed_at < n, "the load finished before the kill; make it longer"
        with OutputQueue(name=stream, config=plane.client_config()) as output:
            results = output.query_many([f"k{i}" for i in range(n)], timeout=120)
    finally:
        stop(victim)
        stop(survivor)
    assert len(results) == n  # none lost
    finished = Counter(plane.finished(stream))
    assert len(finished) == n and set(finished.values()) == {1}  # one result each, never two
    per_part = [db.llen(keys.finished(p)) for p in plane.parts(stream)]
    assert min(per_part) > n / plane.partitions / 2  # spread over every partition
    direct = onnx_direct(onnx_model_dir, xs)
    for i in range(n):
        assert_top_n(results[f"k{i}"], direct[i % 40], 3)
    assert plane.queued(stream) == 0
    assert plane.pending(stream) == 0
    assert survivor.returncode == 0


def test_sigterm_drains_what_was_read_and_leaves_the_rest_queued(
    tmp_path, onnx_model_dir, plane, stream
) -> None:
    n = 3000
    db = plane.db
    worker = start_worker(tmp_path, "w", onnx_model_dir, plane, stream)
    x = np.ones((3, 32, 32), np.float32)
    try:
        wait_workers(db, stream, 1)
        with InputQueue(name=stream, config=plane.client_config()) as client:
            client.enqueue_many((f"t{i}", {"t": x}) for i in range(n))
        while plane.finished_count(stream) < 200:
            time.sleep(0.005)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        stop(worker)
    answered = plane.finished_count(stream)
    queued = plane.queued(stream)
    assert plane.pending(stream) == 0  # nothing read and dropped
    assert answered + queued == n and queued > 0
    assert not db.exists(keys.ready(stream))
