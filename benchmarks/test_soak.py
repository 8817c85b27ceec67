"""Soak: a server process under about half its capacity for a long time.

Reports the server's RSS growth and the p99 latency at the start and at the end. Runs only when
asked, since it takes as long as you give it::

    make soak                       # ZOO_SOAK_S=600: ten minutes
    ZOO_SOAK_S=60 .venv/bin/python -m pytest benchmarks/test_soak.py -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo_serving import InputQueue, OutputQueue
from zoo_serving.broker.embedded import ManagedRedis, free_port

SOAK_S = float(os.environ.get("ZOO_SOAK_S", "0"))
WINDOW_S = min(60.0, SOAK_S / 4)  # p99 over the first and the last minute
SHAPE = (3, 32, 32)

pytestmark = [
    pytest.mark.skipif(SOAK_S <= 0, reason="soak runs only when asked: ZOO_SOAK_S=600 (make soak)"),
    pytest.mark.timeout(SOAK_S + 600),  # the suite's default per-test timeout is far shorter
]


def _build_model(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 100),
        nn.Softmax(dim=1),
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *SHAPE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["prob"],
            dynamic_axes={"input": {0: "N"}, "prob": {0: "N"}},
            opset_version=17,
        )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _capacity(url: str, stream: str, x: np.ndarray, n: int = 3000) -> float:
    """Records/s the server sustains with the queue kept full."""
    with InputQueue(url=url, name=stream) as inq, OutputQueue(url=url, name=stream) as outq:
        start = time.perf_counter()
        uris = inq.enqueue_many((f"cap-{i}", {"t": x}) for i in range(n))
        got = outq.query_many(uris, timeout=120)
        assert len(got) == n
        return n / (time.perf_counter() - start)


def _open_loop(url: str, stream: str, x: np.ndarray, rate: float, seconds: float) -> list:
    """Send at ``rate`` records/s for ``seconds``; returns (send time, latency s) per record."""
    sent: dict[str, float] = {}
    done: list[tuple[float, float]] = []
    finished = threading.Event()

    def receive() -> None:
        with OutputQueue(url=url, name=stream) as outq:
            i = 0
            while not (finished.is_set() and i >= len(sent)):
                uri = f"soak-{i}"
                if uri not in sent:
                    time.sleep(0.001)
                    continue
                value = outq.query(uri, timeout=30)
                assert value is not None, f"{uri} got no result in 30 s"
                done.append((sent[uri], time.perf_counter() - sent[uri]))
                i += 1

    receiver = threading.Thread(target=receive)
    receiver.start()
    tick = 0.01
    with InputQueue(url=url, name=stream) as inq:
        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate)
            batch = [(f"soak-{j}", {"t": x}) for j in range(i, due)]
            if batch:
                stamp = time.perf_counter()
                inq.enqueue_many(batch)
                sent.update((uri, stamp) for uri, _ in batch)
                i = due
            time.sleep(tick)
    finished.set()
    receiver.join(120)
    assert len(done) == len(sent), f"{len(sent) - len(done)} records without a result"
    return done


def test_soak_half_capacity(benchmark, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _build_model(model_dir / "cnn.onnx")
    stream = "soak"
    with ManagedRedis(tmp_path / "redis", free_port()) as redis_server:
        config = {
            "model": {"path": str(model_dir)},
            "data": {"src": redis_server.url, "stream": stream, "shape": "3,32,32"},
            "params": {"batch_size": 8, "top_n": 5},
            "log": {"dir": str(tmp_path / "w")},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zoo_serving",
                "start",
                "--foreground",
                "-c",
                str(tmp_path / "config.yaml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with InputQueue(url=redis_server.url, name=stream) as inq:
                assert inq.wait_ready(120)
            x = np.random.default_rng(0).random(SHAPE, np.float32)
            capacity = _capacity(redis_server.url, stream, x)
            rate = capacity / 2
            rss_start = _rss_mb(proc.pid)
            result: dict = {}

            def run() -> None:
                result["done"] = _open_loop(redis_server.url, stream, x, rate, SOAK_S)

            benchmark.pedantic(run, rounds=1, iterations=1)
            rss_end = _rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    done = result["done"]
    t0 = done[0][0]
    first = [lat for t, lat in done if t - t0 < WINDOW_S]
    last = [lat for t, lat in done if t - t0 > SOAK_S - WINDOW_S]
    p99_start, p99_end = (float(np.percentile(v, 99)) * 1000 for v in (first, last))
    info = {
        "capacity_rps": round(capacity),
        "rate_rps": round(rate),
        "records": len(done),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "p99_start_ms": round(p99_start, 2),
        "p99_end_ms": round(p99_end, 2),
        "p50_all_ms": round(float(np.percentile([lat for _, lat in done], 50)) * 1000, 2),
    }
    benchmark.extra_info.update(info)
    print(
        f"\nsoak {SOAK_S:.0f}s at {rate:.0f} rec/s (capacity {capacity:.0f}): "
        f"RSS {rss_start:.1f} -> {rss_end:.1f} MB, p99 {p99_start:.2f} -> {p99_end:.2f} ms, "
        f"{len(done)} records"
    )
    assert proc.returncode == 0
