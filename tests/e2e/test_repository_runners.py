"""A model repository under the runners that run workers in other processes: a hot swap under
load with a worker killed (``kill -9``) in the middle of it, and nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import answer_of, scale_model
from zoo_serving import InputQueue, Server, keys


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_a_swap_under_load_with_a_worker_killed_loses_nothing(
    runner: str, tmp_path: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    root = tmp_path / "models"
    scale_model(root / "m" / "1" / "m.onnx", 2.0)
    raw = {
        "model": {"repository": str(root)},
        "data": {"src": redis_url, "stream": stream, "shape": "4"},
        "params": {
            "top_n": 0,
            "batch_size": 4,
            "runner": runner,
            "workers": 2,
            "claim_idle_ms": 1000,
        },
        "repository": {"control": "poll", "poll_s": 0.2},
        "log": {"dir": str(tmp_path / "work")},
    }
    sent: list[tuple[str, np.ndarray, float]] = []
    stop = threading.Event()

    def send() -> None:
        rng = np.random.default_rng(3)
        with InputQueue(url=redis_url, name=stream, model="m") as queue:
            while not stop.is_set():
                x = rng.normal(size=4).astype(np.float32)
                uri = f"r{len(sent)}"
                queue.enqueue(uri, t=x)
                sent.append((uri, x, time.time()))
                time.sleep(0.003)

    with Server(raw) as server:
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(1.0)
        (root / "m" / "2").mkdir()
        shutil.copy(scale_model(tmp_path / "staging" / "m.onnx", 3.0), root / "m" / "2")
        if runner == "processes":  # a worker dies in the middle of the swap
            time.sleep(0.3)
            os.kill(server.runner.pids[0], signal.SIGKILL)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while True:
            workers = server.models.get("m").workers
            if len(workers) == 2 and all(w.get("current") == 2 for w in workers.values()):
                break
            assert time.monotonic() < deadline, f"not every worker swapped: {workers}"
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        sender.join()
        versions = []
        for uri, x, _at in sent:
            got = answer_of(redis_client, stream, uri, timeout_s=30)
            assert got.model == "m", (uri, got.value)
            np.testing.assert_allclose(got.value, x * {1: 2.0, 2: 3.0}[got.version], rtol=1e-6)
            versions.append(got.version)
    assert {1, 2} <= set(versions)
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert redis_client.xlen(keys.dead_letter(stream)) == 0
    assert redis_client.xlen(stream) == 0
