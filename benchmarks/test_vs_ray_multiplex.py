"""Issue 14, target 6: many models on one machine, zoo_serving's model repository against Ray
Serve's model multiplexing (``@serve.multiplexed``), the same 8 ONNX MLPs, the same 2 cores,
the same load shape: ``CLIENTS`` callers from this process, each sending one record to a
random model and the next as soon as the answer is back, through each side's public API (our
``InputQueue(model=...).predict``, Ray's handle with ``multiplexed_model_id``). Both answer with
the top-5 by the same code. zoo_serving batches (8 / 5 ms) and shares 2 execution slots across
the models; Ray runs 2 replicas, each holding up to 8 models, one request at a time per call
(Ray Serve cannot batch across multiplexed models). Reported: throughput and each model's p99.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models_load import inputs, repository
from zoo_serving import InputQueue, Server
from zoo_serving.broker.embedded import ManagedRedis

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

NAMES = [f"m{i}" for i in range(8)]
CLIENTS = 32
DURATION_S = float(os.environ.get("ZOO_BENCH_DURATION_S", "10"))


def zoo_closed_loop(
    url: str, records: list[np.ndarray], warmup_s: float, duration_s: float
) -> tuple[float, dict[str, list[float]], int]:
    rng_lock = threading.Lock()
    rng = np.random.default_rng(0)
    t_measure = time.monotonic() + warmup_s
    t_stop = t_measure + duration_s
    by_model: dict[str, list[float]] = {n: [] for n in NAMES}
    counts = {"answered": 0, "errors": 0}
    queues = {n: InputQueue(url=url, name="multi", model=n) for n in NAMES}

    def caller() -> None:
        while (sent_at := time.monotonic()) < t_stop:
            with rng_lock:
                name = NAMES[int(rng.integers(len(NAMES)))]
                record = records[int(rng.integers(len(records)))]
            try:
                queues[name].predict(record, timeout=30)
            except Exception:
                counts["errors"] += 1
            at = time.monotonic()
            if sent_at >= t_measure and at < t_stop:
                counts["answered"] += 1
                by_model[name].append((at - sent_at) * 1000.0)

    threads = [threading.Thread(target=caller) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in queues.values():
        q.close()
    return counts["answered"] / duration_s, by_model, counts["errors"]


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loopback-only local Ray whose replicas compete for the CPU at nice 0, as our workers
    do (see test_vs_ray_serve.py)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_worker_niceness", "0")


def test_many_models_against_ray_serve_multiplexing(
    benchmark: Any,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
    ray_env: None,
) -> None:
    import ray_multiplex_app
    from ray_serve_app import local_serve

    root = repository(tmp_path / "models", dict.fromkeys(NAMES, 512))
    records = [r["x"] for r in inputs(16)]
    cfg = {
        "model": {"repository": str(root)},
        "data": {"src": redis.url, "stream": "multi", "shape": "256"},
        "params": {"batch_size": 8, "max_wait_ms": 5, "top_n": 5, "slots": 2},
        "repository": {"default": NAMES[0]},
        "log": {"dir": str(tmp_path / "work"), "error": "n"},
    }
    with Server(cfg):
        zoo = benchmark.pedantic(
            lambda: zoo_closed_loop(redis.url, records, 2.0, DURATION_S), rounds=1, iterations=1
        )
    with local_serve():
        handle = ray_multiplex_app.deploy(str(root), replicas=2, max_ongoing_requests=CLIENTS)
        ray = ray_multiplex_app.closed_loop(
            handle, NAMES, records, clients=CLIENTS, warmup_s=2.0, duration_s=DURATION_S
        )

    def p99s(by_model: dict[str, list[float]]) -> dict[str, float]:
        return {n: float(np.percentile(v, 99)) for n, v in by_model.items() if v}

    zoo_p99, ray_p99 = p99s(zoo[1]), p99s(ray[1])
    report_line(
        f"vs Ray Serve multiplexing, 8 models, {CLIENTS} in flight: throughput zoo / ray = "
        f"{zoo[0] / ray[0]:.2f} ({zoo[0]:.0f} / {ray[0]:.0f} rec/s); errors {zoo[2]} / {ray[2]}"
    )
    report_line(
        "vs Ray Serve multiplexing: per-model p99 ms zoo / ray: "
        + ", ".join(f"{n} {zoo_p99[n]:.1f}/{ray_p99.get(n, float('nan')):.1f}" for n in NAMES)
    )
    worst = max(zoo_p99.values()) / max(ray_p99.values())
    report_line(f"vs Ray Serve multiplexing: worst per-model p99 zoo / ray = {worst:.2f}")
    assert zoo[2] == 0 and ray[2] == 0
