"""Served throughput against raw ONNX Runtime throughput, measured in the same run.

Each benchmark measures the model's raw in-process throughput (``Model.predict`` on ready
batches, the same session settings the server uses), then serves the same model with
:class:`zoo_serving.Server` while a client in another process enqueues records and waits for
every result. The figure that matters is ``served / raw`` on this machine; absolute times are
reported, never asserted. ``ZOO_BENCH_GATE=1`` turns the 0.90 target into an assertion.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo_serving
from zoo_serving import InputQueue, OutputQueue, Server

TARGET_RATIO = 0.90
GATE = os.environ.get("ZOO_BENCH_GATE") == "1"
SEED = 1234
TOP_N = 5

pytestmark = [
    pytest.mark.timeout(300),
    # the below-target notice is a warning on purpose: shown, never an error
    pytest.mark.filterwarnings("default:served/raw:UserWarning"),
]


def record_input(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Record ``index`` of a run: the client and the checker regenerate it from the seed."""
    return np.random.default_rng((seed, index)).standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------------ client process


@dataclass(frozen=True)
class ClientJob:
    """What the client process sends, and where."""

    url: str
    stream: str
    shape: tuple[int, ...]
    records: int
    seed: int
    chunk: int
    spot: tuple[int, ...]
    timeout_s: float


def run_client(conn: Any, job: ClientJob) -> None:
    """The client process: build every record, say ready, then on "go" enqueue them all in
    chunks and wait for every result; send back the time from first enqueue to last result."""
    try:
        tensors = [record_input(job.seed, i, job.shape) for i in range(job.records)]
        uris = [f"r{i}" for i in range(job.records)]
        with InputQueue(url=job.url, name=job.stream) as inq, OutputQueue(
            url=job.url, name=job.stream
        ) as outq:
            conn.send("ready")
            conn.recv()
            start = time.monotonic()
            for first in range(0, job.records, job.chunk):
                inq.enqueue_many(
                    (uris[i], {"input": tensors[i]})
                    for i in range(first, min(first + job.chunk, job.records))
                )
            results = outq.query_many(uris, job.timeout_s)
            elapsed_s = time.monotonic() - start
        errors = [f"{u}: {r!r}" for u, r in results.items() if isinstance(r, Exception)]
        spot = {i: results.get(uris[i]) for i in job.spot}
        conn.send({"elapsed_s": elapsed_s, "received": len(results), "errors": errors[:5],
                   "spot": spot})
    except BaseException:
        conn.send({"crash": traceback.format_exc()})
        raise
    finally:
        conn.close()


class ClientProcess:
    """A :func:`run_client` in a spawned process, driven through a pipe."""

    def __init__(self, job: ClientJob) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.job = job
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=run_client, args=(child, job), daemon=True)
        self.process.start()
        child.close()
        self.report: dict[str, Any] = {}

    def _recv(self, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"client process silent for {timeout_s}s")
        message = self.conn.recv()
        if isinstance(message, dict) and "crash" in message:
            raise RuntimeError(f"client process failed:\n{message['crash']}")
        return message

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        assert self._recv(timeout_s) == "ready"

    def go(self) -> None:
        """Timed by pytest-benchmark: from the go signal to the client's last result."""
        self.conn.send("go")
        self.report = self._recv(self.job.timeout_s + 30)

    def close(self) -> None:
        self.conn.close()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# ------------------------------------------------------------------ measuring


def raw_records_per_s(
    model: zoo_serving.Model, shape: tuple[int, ...], batch_size: int, batches: int
) -> float:
    """Records/s of ``model.predict`` on ready batches of ``batch_size`` random records."""
    name = model.inputs[0].name
    rng = np.random.default_rng(SEED)
    ready = [
        {name: rng.standard_normal((batch_size, *shape), dtype=np.float32)} for _ in range(4)
    ]
    for batch in ready[:2]:
        model.predict(batch)
    start = time.monotonic()
    for i in range(batches):
        model.predict(ready[i % len(ready)])
    return batches * batch_size / (time.monotonic() - start)


def serve_config(model_dir: Path, url: str, work_dir: Path, batch_size: int) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir)},
        "data": {"src": url, "stream": f"bench-{uuid.uuid4().hex[:12]}", "shape": "3,224,224"},
        "params": {"batch_size": batch_size, "top_n": TOP_N, "max_wait_ms": 5},
        "log": {"dir": str(work_dir)},
    }


@dataclass
class Figures:
    raw: float
    served: float
    batch_size: int

    @property
    def ratio(self) -> float:
        return self.served / self.raw

    def line(self, label: str) -> str:
        return (
            f"{label}: served/raw = {self.ratio:.2f} (served {self.served:.1f} rec/s, "
            f"raw {self.raw:.1f} rec/s, batch {self.batch_size})"
        )


def check_spot(model: zoo_serving.Model, job: ClientJob, spot: dict[int, Any]) -> None:
    """The served top-N of a few records is the raw model's top-N for the same input.

    Scores are compared by value, so near-ties that swap places between batchings do not fail.
    """
    batch = np.stack([record_input(job.seed, i, job.shape) for i in job.spot])
    scores = model.predict({model.inputs[0].name: batch})[model.outputs[0].name]
    for i, row in zip(job.spot, scores):
        served = spot[i]
        assert isinstance(served, list) and len(served) == TOP_N, f"record {i}: {served!r}"
        index = [c for c, _ in served]
        prob = np.array([p for _, p in served])
        np.testing.assert_allclose(prob, row[index], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(prob, np.sort(row)[::-1][:TOP_N], rtol=1e-4, atol=1e-7)


def measure(
    benchmark: Any,
    model_dir: Path,
    url: str,
    work_dir: Path,
    *,
    shape: tuple[int, ...],
    batch_size: int,
    records: int,
    raw_batches: int,
    chunk: int = 16,
) -> Figures:
    """Raw throughput (half before, half after serving), then served throughput of
    ``records`` sent by a client process; checks every result and a few answers."""
    model = zoo_serving.load_model(model_dir, threads=0)
    try:
        half = max(raw_batches // 2, 1)
        raw_before = raw_records_per_s(model, shape, batch_size, half)
        config = serve_config(model_dir, url, work_dir, batch_size)
        job = ClientJob(
            url=url,
            stream=config["data"]["stream"],
            shape=shape,
            records=records,
            seed=SEED,
            chunk=chunk,
            spot=(0, 1, records // 2, records - 1),
            timeout_s=120.0,
        )
        with Server(config):
            client = ClientProcess(job)
            try:
                client.wait_ready()
                benchmark.pedantic(client.go, rounds=1, iterations=1)
            finally:
                client.close()
        raw_after = raw_records_per_s(model, shape, batch_size, half)
        report = client.report
        assert report["received"] == records, f"{records - report['received']} results missing"
        assert not report["errors"], report["errors"]
        check_spot(model, job, report["spot"])
    finally:
        model.close()
    figures = Figures(
        raw=2 / (1 / raw_before + 1 / raw_after),  # both halves ran the same record count
        served=records / report["elapsed_s"],
        batch_size=batch_size,
    )
    benchmark.extra_info.update(
        raw_records_per_s=round(figures.raw, 2),
        served_records_per_s=round(figures.served, 2),
        ratio=round(figures.ratio, 4),
        batch_size=batch_size,
        records=records,
    )
    return figures


def judge(figures: Figures, label: str, report_line: Callable[[str], None]) -> None:
    report_line(figures.line(label))
    if figures.ratio < TARGET_RATIO:
        message = (
            f"served/raw {figures.ratio:.2f} is below the target {TARGET_RATIO:.2f} "
            f"for {label}"
        )
        if GATE:
            pytest.fail(message)
        warnings.warn(message, UserWarning, stacklevel=2)


# ------------------------------------------------------------------ benchmarks


@pytest.mark.parametrize("batch_size", [8, 1])
def test_resnet18_served_vs_raw(
    benchmark: Any,
    resnet18_dir: Path,
    redis_url: str,
    tmp_path: Path,
    report_line: Callable[[str], None],
    batch_size: int,
) -> None:
    """The issue's figure at batch 8 (gated at 0.90 with ZOO_BENCH_GATE=1); batch 1 for
    comparison, reported only."""
    figures = measure(
        benchmark,
        resnet18_dir,
        redis_url,
        tmp_path,
        shape=(3, 224, 224),
        batch_size=batch_size,
        records=640 if batch_size == 8 else 320,
        raw_batches=80 if batch_size == 8 else 320,
    )
    label = f"resnet18 3x224x224 batch {batch_size}"
    if batch_size == 8:
        judge(figures, label, report_line)
    else:
        report_line(figures.line(label))


def test_linear_end_to_end(
    benchmark: Any,
    linear_dir: Path,
    redis_url: str,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """A model that costs next to nothing: the ceiling of the serving path in records/s.

    The ratio is reported for scale only; here the server's own work is the whole cost.
    """
    figures = measure(
        benchmark,
        linear_dir,
        redis_url,
        tmp_path,
        shape=(1000,),
        batch_size=8,
        records=4000,
        raw_batches=2000,
        chunk=100,
    )
    report_line(figures.line("linear 1000 batch 8 (end to end)"))
