"""Throughput of each runner, measured in one run: processes and ray at 2 workers against
threads at 2 workers, and processes at 2 workers against 1.

Every configuration serves its own stream from the start of the benchmark, and a client process
per stream enqueues a round's records and then waits for every result (the client of
``test_throughput.py``). Rounds cycle through the configurations (in a rotating order), so each
cycle sets the runners side by side under the same machine load; a figure is the median of the
per-cycle ratios. Every worker runs ONNX Runtime on one thread (``params.threads: 1``), so a
configuration's cores are its worker count. Ratios are reported, never asserted.
"""

from __future__ import annotations

import contextlib
import statistics
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import zoo_serving
from conftest import export_onnx
from test_throughput import ClientJob, ClientProcess, check_spot
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis

SHAPE = (3, 64, 64)
RECORDS = 2000
CYCLES = 3
BATCH = 8
#: label -> (runner, workers); the first is the baseline
CONFIGS = {
    "threads x2": ("threads", 2),
    "processes x2": ("processes", 2),
    "ray x2": ("ray", 2),
    "processes x1": ("processes", 1),
}
#: figure -> (numerator, denominator)
RATIOS = {
    "processes/threads at 2 workers": ("processes x2", "threads x2"),
    "ray/threads at 2 workers": ("ray x2", "threads x2"),
    "processes 2 workers / 1 worker": ("processes x2", "processes x1"),
}

pytestmark = pytest.mark.timeout(600)


def _small_cnn() -> Any:
    """Three 3x3 conv layers (32-64-128 channels) on 3x64x64, 100 classes + softmax."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 100),
        nn.Softmax(dim=1),
    )


@pytest.fixture(scope="module")
def small_cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    return export_onnx(_small_cnn(), SHAPE, tmp_path_factory.mktemp("cnn") / "model.onnx")


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local Ray whatever the environment says, on loopback without token auth: Ray keeps
    its auth mode for the whole process, and the Ray Serve benchmark later in the same session
    starts its Ray so (one with tokens before it leaves Serve's requests hanging)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def test_runner_throughput_relative_to_threads(
    benchmark: Any,
    small_cnn_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
    ray_env: None,
) -> None:
    """Records/s of every configuration per cycle; ratios are medians over the cycles."""
    rates: dict[str, list[float]] = {label: [] for label in CONFIGS}
    reports: dict[str, list[dict[str, Any]]] = {label: [] for label in CONFIGS}
    clients: dict[str, ClientProcess] = {}
    cycle_no = 0

    def cycle() -> None:
        nonlocal cycle_no
        labels = list(CONFIGS)
        shift = cycle_no % len(labels)
        for label in labels[shift:] + labels[:shift]:
            report = clients[label].run_round()
            reports[label].append(report)
            rates[label].append(RECORDS / report["elapsed_s"])
        cycle_no += 1

    with contextlib.ExitStack() as stack:
        for label, (runner, workers) in CONFIGS.items():
            stream = f"bench-{runner}-{workers}-{uuid.uuid4().hex[:8]}"
            config = {
                "model": {"path": str(small_cnn_dir)},
                "data": {"src": redis.url, "stream": stream, "shape": ",".join(map(str, SHAPE))},
                "params": {
                    "batch_size": BATCH,
                    "top_n": 5,
                    "runner": runner,
                    "workers": workers,
                    "threads": 1,
                },
                "log": {"dir": str(tmp_path / stream)},
            }
            stack.enter_context(Server(config))
            job = ClientJob(
                url=redis.url,
                stream=stream,
                shape=SHAPE,
                records=RECORDS,
                chunk=50,
                spot=(0, 1, RECORDS // 2, RECORDS - 1),
            )
            clients[label] = client = ClientProcess(job)
            stack.callback(client.close)
        for client in clients.values():
            client.wait_ready()
            client.run_round()  # warm-up: caches, connections, thread pools
        benchmark.pedantic(cycle, rounds=CYCLES, iterations=1)

    with zoo_serving.load_model(small_cnn_dir, threads=1) as model:
        for label, label_reports in reports.items():
            for report in label_reports:
                assert report["received"] == RECORDS, f"{label}: results missing"
                assert not report["errors"], f"{label}: {report['errors']}"
                check_spot(model, clients[label].job, report["spot"])

    figures = {
        name: statistics.median(a / b for a, b in zip(rates[num], rates[den]))
        for name, (num, den) in RATIOS.items()
    }
    benchmark.extra_info.update(
        records_per_round=RECORDS,
        cycles=CYCLES,
        records_per_s={label: [round(r, 1) for r in rs] for label, rs in rates.items()},
        ratios={name: round(value, 3) for name, value in figures.items()},
    )
    medians = ", ".join(f"{label} {statistics.median(rs):.0f}" for label, rs in rates.items())
    report_line(f"runners, small CNN 3x64x64, 1 thread per worker: rec/s {medians}")
    for name, value in figures.items():
        report_line(f"runners: {name} = {value:.2f} (median of {CYCLES} cycles)")
