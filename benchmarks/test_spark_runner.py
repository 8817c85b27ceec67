"""Throughput of the spark runner against the threads runner, both at 2 workers, in one run.

Both servers are up at once, on two streams of one redis-server: the threads runner in this
process, the spark runner as two tasks of a local[2] Spark job (one Python worker process
each). Rounds alternate (threads, spark, threads, ...), each sent by a client process of its
own; each spark round is set against the mean of the threads rounds either side, and the
figure is the median over the rounds other processes on the machine left alone. Workers use
one ONNX Runtime thread each (two workers, two cores). Reported, never asserted.

The client process and the CPU meter are those of ``test_throughput.py``.
"""

from __future__ import annotations

import os
import statistics
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import zoo_serving
from harness import descendants
from test_throughput import FOREIGN_MAX, TOP_N, ClientJob, ClientProcess, ForeignCpu, check_spot
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis
from zoo_serving.spark.session import spark_session

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

WORKERS = 2
ROUNDS = 4


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """A local[2] SparkSession on loopback, no UI; the spark runner finds and uses it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        config = zoo_serving.load_config({"model": {"path": "-"}, "spark": {"master": "local[2]"}})
        session = spark_session(config, {"spark.ui.enabled": "false"})
        yield session
        session.stop()


def compare(
    benchmark: Any,
    model_dir: Path,
    redis: ManagedRedis,
    work_dir: Path,
    *,
    shape: tuple[int, ...],
    records: int,
    chunk: int = 16,
) -> dict[str, Any]:
    """Serve ``records`` per round through each runner, alternating; returns the figures."""
    servers: dict[str, Server] = {}
    clients: dict[str, ClientProcess] = {}
    rates: dict[str, list[float]] = {"threads": [], "spark": []}
    foreign: dict[str, list[float]] = {"threads": [], "spark": []}
    reports: list[tuple[str, dict[str, Any]]] = []
    try:
        for runner in rates:
            stream = f"bench-{runner}-{uuid.uuid4().hex[:8]}"
            config = {
                "model": {"path": str(model_dir)},
                "data": {"src": redis.url, "stream": stream, "shape": ",".join(map(str, shape))},
                "params": {
                    "batch_size": 8,
                    "top_n": TOP_N,
                    "threads": 1,
                    "workers": WORKERS,
                    "runner": runner,
                },
                "spark": {"master": f"local[{WORKERS}]"},
                "log": {"dir": str(work_dir / runner)},
            }
            servers[runner] = Server(config).start()
            assert servers[runner].runner is not None
            assert servers[runner].runner.workers == WORKERS
            job = ClientJob(redis.url, stream, shape, records, chunk, (0, records - 1))
            clients[runner] = ClientProcess(job)
        for client in clients.values():
            client.wait_ready()
        meter = ForeignCpu(descendants(os.getpid()))

        def one(runner: str) -> None:
            meter.start()
            report = clients[runner].run_round()
            foreign[runner].append(meter.share())
            rates[runner].append(records / report["elapsed_s"])
            reports.append((runner, report))

        benchmark.pedantic(lambda: one("spark"), setup=lambda: one("threads"), rounds=ROUNDS)
        one("threads")
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
    with zoo_serving.load_model(model_dir, threads=1) as model:
        for runner, report in reports:
            assert report["received"] == records and not report["errors"], (runner, report)
            check_spot(model, clients[runner].job, report["spot"])
    t, s = rates["threads"], rates["spark"]
    ratios = [s[i] / ((t[i] + t[i + 1]) / 2) for i in range(len(s))]
    disturbed = [
        max(foreign["threads"][i], foreign["spark"][i], foreign["threads"][i + 1])
        for i in range(len(s))
    ]
    clean = [i for i, f in enumerate(disturbed) if f <= FOREIGN_MAX] or list(range(len(s)))
    figures = {
        "ratio": round(statistics.median(ratios[i] for i in clean), 3),
        "ratios": [round(r, 3) for r in ratios],
        "threads_records_per_s": round(statistics.median(t), 1),
        "spark_records_per_s": round(statistics.median(s), 1),
        "foreign_cpu": [round(f, 3) for f in disturbed],
        "clean_rounds": [i for i in clean if disturbed[i] <= FOREIGN_MAX],
        "workers": WORKERS,
        "records_per_round": records,
    }
    benchmark.extra_info.update(figures)
    return figures


def line(label: str, figures: dict[str, Any]) -> str:
    clean = len(figures["clean_rounds"])
    basis = f"{clean} of {len(figures['ratios'])} rounds undisturbed"
    return (
        f"{label}: spark/threads = {figures['ratio']:.2f} at {figures['workers']} workers "
        f"(spark {figures['spark_records_per_s']:.1f} rec/s, threads "
        f"{figures['threads_records_per_s']:.1f} rec/s; per round "
        + ", ".join(f"{r:.2f}" for r in figures["ratios"])
        + f"; {basis})"
    )


def test_spark_vs_threads_resnet18(
    benchmark: Any,
    spark: Any,
    resnet18_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """ResNet-18, 3x224x224, batch 8: the model dominates; the runner's cost shows as the gap."""
    figures = compare(benchmark, resnet18_dir, redis, tmp_path, shape=(3, 224, 224), records=160)
    report_line(line("resnet18 3x224x224 batch 8", figures))


def test_spark_vs_threads_linear(
    benchmark: Any,
    spark: Any,
    linear_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """1,000 floats -> Linear -> softmax: next to no model, so the serving path is the cost."""
    figures = compare(
        benchmark, linear_dir, redis, tmp_path, shape=(1000,), records=4000, chunk=200
    )
    report_line(line("linear 1000 -> 1000 batch 8", figures))
