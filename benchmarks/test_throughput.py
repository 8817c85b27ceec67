"""Served throughput against raw ONNX Runtime throughput, measured in the same run.

Each benchmark loads the model in this process for the raw figure (``Model.predict`` on ready
batches, the session settings the server uses) and serves the same model with
:class:`zoo_serving.Server`, while a client in another process enqueues records and waits for
every result. Raw segments and served rounds alternate (raw, served, raw, ...); each round is
set against the mean of the raw segments either side, and the figure is the median over the
rounds that other processes on the machine left alone (see :class:`ForeignCpu`). Absolute
rates are reported, never asserted; ``ZOO_BENCH_GATE=1`` turns the 0.90 target into an
assertion.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo_serving
from zoo_serving import InputQueue, OutputQueue, Server
from zoo_serving.redis_server import ManagedRedis

TARGET_RATIO = 0.90
GATE = os.environ.get("ZOO_BENCH_GATE") == "1"
SEED = 1234
TOP_N = 5
RESULT_TIMEOUT_S = 120.0
FOREIGN_MAX = 0.05  # a round is left out when other processes took more of the CPU than this

pytestmark = [
    pytest.mark.timeout(300),
    # the below-target notice is a warning on purpose: shown in the summary, never an error
    pytest.mark.filterwarnings("default:served/raw:UserWarning"),
]


def record_input(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Record ``index`` of a run; the client and the checker regenerate it from the seed."""
    return np.random.default_rng((seed, index)).standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------------ client process


@dataclass(frozen=True)
class ClientJob:
    """What the client process sends, and where."""

    url: str
    stream: str
    shape: tuple[int, ...]
    records: int
    chunk: int
    spot: tuple[int, ...]
    seed: int = SEED


def run_client(conn: Any, job: ClientJob) -> None:
    """The client process. Builds every record, says "ready", then for each round number it
    is sent: enqueues all records in chunks, waits for every result and sends back the time
    from the first enqueue to the last result. Stops on None."""
    try:
        tensors = [record_input(job.seed, i, job.shape) for i in range(job.records)]
        with (
            InputQueue(url=job.url, name=job.stream) as inq,
            OutputQueue(url=job.url, name=job.stream) as outq,
        ):
            conn.send("ready")
            while (round_no := conn.recv()) is not None:
                uris = [f"{round_no}-{i}" for i in range(job.records)]
                start = time.monotonic()
                for first in range(0, job.records, job.chunk):
                    last = min(first + job.chunk, job.records)
                    inq.enqueue_many((uris[i], {"input": tensors[i]}) for i in range(first, last))
                results = outq.query_many(uris, RESULT_TIMEOUT_S)
                elapsed_s = time.monotonic() - start
                errors = [f"{u}: {r!r}" for u, r in results.items() if isinstance(r, Exception)]
                conn.send(
                    {
                        "elapsed_s": elapsed_s,
                        "received": len(results),
                        "errors": errors[:5],
                        "spot": {i: results.get(uris[i]) for i in job.spot},
                    }
                )
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
        self._rounds = 0

    def _recv(self, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"client process silent for {timeout_s}s")
        try:
            message = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(
                f"client process ended (exit code {self.process.exitcode}) without a report"
            ) from None
        if isinstance(message, dict) and "crash" in message:
            raise RuntimeError(f"client process failed:\n{message['crash']}")
        return message

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        message = self._recv(timeout_s)
        assert message == "ready", message

    def run_round(self) -> dict[str, Any]:
        """One timed round: every record enqueued, every result back."""
        self._rounds += 1
        self.conn.send(self._rounds)
        return self._recv(RESULT_TIMEOUT_S + 30)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone: the join below tells
            self.conn.send(None)
        self.conn.close()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# ------------------------------------------------------------------ measuring


def raw_records_per_s(
    model: zoo_serving.Model, shape: tuple[int, ...], batch_size: int, batches: int
) -> float:
    """Records/s of ``model.predict`` over ``batches`` ready batches of random records."""
    name = model.inputs[0].name
    rng = np.random.default_rng(SEED)
    ready = [{name: rng.standard_normal((batch_size, *shape), dtype=np.float32)} for _ in range(4)]
    for batch in ready[:2]:
        model.predict(batch)  # warm caches and thread pool, untimed
    start = time.monotonic()
    for i in range(batches):
        model.predict(ready[i % len(ready)])
    return batches * batch_size / (time.monotonic() - start)


def check_spot(model: zoo_serving.Model, job: ClientJob, spot: dict[int, Any]) -> None:
    """The served top-N of a few records is the raw model's top-N for the same input.

    Scores are compared by value, so near-ties that trade places between batchings pass.
    """
    batch = np.stack([record_input(job.seed, i, job.shape) for i in job.spot])
    scores = model.predict({model.inputs[0].name: batch})[model.outputs[0].name]
    for i, row in zip(job.spot, scores):
        served = spot[i]
        assert isinstance(served, list) and len(served) == TOP_N, f"record {i}: {served!r}"
        prob = np.array([p for _, p in served])
        np.testing.assert_allclose(prob, row[[c for c, _ in served]], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(prob, np.sort(row)[::-1][:TOP_N], rtol=1e-4, atol=1e-7)


class ForeignCpu:
    """How much of the machine's CPU went to processes other than ours during a segment.

    Reads Linux ``/proc``: busy time of all CPUs (user, nice, system, steal) minus the time of
    this process, the client and redis-server, as a share of wall time x CPUs. Another job on
    a small machine skews a ratio far more than the serving path does, so such segments are
    left out of the figure. Where ``/proc`` is missing the share is 0.
    """

    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._start: tuple[float, int, int] | None = None

    def _sample(self) -> tuple[float, int, int] | None:
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            ours = 0
            for pid in self.pids:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ours += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        busy = cpu[0] + cpu[1] + cpu[2] + (cpu[7] if len(cpu) > 7 else 0)
        return time.monotonic(), busy, ours

    def start(self) -> None:
        self._start = self._sample()

    def share(self) -> float:
        """Foreign CPU since :meth:`start`, as a share of the whole machine (0..1)."""
        end = self._sample()
        if self._start is None or end is None:
            return 0.0
        wall_s = end[0] - self._start[0]
        foreign_s = ((end[1] - self._start[1]) - (end[2] - self._start[2])) * self._TICK_S
        return max(foreign_s, 0.0) / (wall_s * (os.cpu_count() or 1))


@dataclass
class Rounds:
    """Raw segments and served rounds, alternating: raw, served, raw, ..., served, raw."""

    model: zoo_serving.Model
    client: ClientProcess
    meter: ForeignCpu
    shape: tuple[int, ...]
    batch_size: int
    raw_batches: int
    raw: list[float] = field(default_factory=list)
    raw_foreign: list[float] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    served_foreign: list[float] = field(default_factory=list)

    def raw_segment(self) -> None:
        self.meter.start()
        self.raw.append(
            raw_records_per_s(self.model, self.shape, self.batch_size, self.raw_batches)
        )
        self.raw_foreign.append(self.meter.share())

    def served_round(self) -> None:
        """Timed by pytest-benchmark; the rate comes from the client's own clock."""
        self.meter.start()
        self.reports.append(self.client.run_round())
        self.served_foreign.append(self.meter.share())

    def check(self) -> None:
        """Every result of every round came back, none failed, and a few match the model."""
        job = self.client.job
        for report in self.reports:
            missing = job.records - report["received"]
            assert missing == 0, f"{missing} of {job.records} results missing"
            assert not report["errors"], report["errors"]
            check_spot(self.model, job, report["spot"])

    def figures(self) -> Figures:
        """Median over the rounds no other load disturbed (over all when none is clean)."""
        served = [self.client.job.records / r["elapsed_s"] for r in self.reports]
        ratios, foreign = [], []
        for i, rate in enumerate(served):
            ratios.append(rate / ((self.raw[i] + self.raw[i + 1]) / 2))
            foreign.append(
                max(self.raw_foreign[i], self.served_foreign[i], self.raw_foreign[i + 1])
            )
        clean = [i for i, f in enumerate(foreign) if f <= FOREIGN_MAX] or list(range(len(ratios)))
        return Figures(
            raw=statistics.median(self.raw[i] for i in clean),
            served=statistics.median(served[i] for i in clean),
            ratio=statistics.median(ratios[i] for i in clean),
            batch_size=self.batch_size,
            ratios=ratios,
            foreign=foreign,
            clean=[i for i in clean if foreign[i] <= FOREIGN_MAX],
        )


@dataclass(frozen=True)
class Figures:
    raw: float
    served: float
    ratio: float
    batch_size: int
    ratios: list[float]
    foreign: list[float]  # per round: the largest foreign CPU share of it and its raw segments
    clean: list[int]  # rounds under FOREIGN_MAX, the ones the medians are over

    @property
    def reliable(self) -> bool:
        return bool(self.clean)

    def line(self, label: str) -> str:
        rounds = len(self.ratios)
        if len(self.clean) == rounds:
            basis = f"median of {rounds} rounds"
        elif self.clean:
            basis = f"median of {len(self.clean)} of {rounds} rounds; others disturbed"
        else:
            basis = (
                f"UNRELIABLE: other load took up to {max(self.foreign):.0%} of the CPU "
                f"in every round"
            )
        return (
            f"{label}: served/raw = {self.ratio:.2f} (served {self.served:.1f} rec/s, "
            f"raw {self.raw:.1f} rec/s, batch {self.batch_size}; {basis})"
        )


def measure(
    benchmark: Any,
    model_dir: Path,
    redis: ManagedRedis,
    work_dir: Path,
    *,
    shape: tuple[int, ...],
    batch_size: int,
    records: int,
    raw_batches: int,
    rounds: int = 3,
    chunk: int = 16,
    threads: int = 0,
) -> Figures:
    """Alternate raw segments of ``raw_batches`` batches with served rounds of ``records``
    records sent by a client process; check every result and a few answers."""
    stream = f"bench-{uuid.uuid4().hex[:12]}"
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": "3,224,224"},
        "params": {"batch_size": batch_size, "top_n": TOP_N, "max_wait_ms": 5, "threads": threads},
        "log": {"dir": str(work_dir)},
    }
    job = ClientJob(
        url=redis.url,
        stream=stream,
        shape=shape,
        records=records,
        chunk=chunk,
        spot=(0, 1, records // 2, records - 1),
    )
    with zoo_serving.load_model(model_dir, threads=threads) as model, Server(config):
        client = ClientProcess(job)
        try:
            client.wait_ready()
            assert redis.process is not None
            meter = ForeignCpu([os.getpid(), client.process.pid, redis.process.pid])
            run = Rounds(model, client, meter, shape, batch_size, raw_batches)
            benchmark.pedantic(run.served_round, setup=run.raw_segment, rounds=rounds)
            run.raw_segment()
            run.check()
        finally:
            client.close()
    figures = run.figures()
    benchmark.extra_info.update(
        raw_records_per_s=round(figures.raw, 2),
        served_records_per_s=round(figures.served, 2),
        ratio=round(figures.ratio, 4),
        ratios=[round(r, 4) for r in figures.ratios],
        foreign_cpu=[round(f, 3) for f in figures.foreign],
        clean_rounds=figures.clean,
        batch_size=batch_size,
        records_per_round=records,
    )
    return figures


def judge(figures: Figures, label: str, report_line: Callable[[str], None]) -> None:
    """Report; below the target, warn (or fail when ZOO_BENCH_GATE=1)."""
    report_line(figures.line(label))
    if not figures.reliable:
        warnings.warn(
            f"served/raw not judged: other load disturbed every round ({label})",
            UserWarning,
            stacklevel=2,
        )
        return
    if figures.ratio < TARGET_RATIO:
        message = f"served/raw {figures.ratio:.2f} is below the target {TARGET_RATIO} ({label})"
        if GATE:
            pytest.fail(message)
        warnings.warn(message, UserWarning, stacklevel=2)


# ------------------------------------------------------------------ benchmarks


def test_resnet18_batch8(
    benchmark: Any,
    resnet18_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """The issue's figure: ResNet-18, 3x224x224 float32, batch 8; target served/raw >= 0.90."""
    figures = measure(
        benchmark,
        resnet18_dir,
        redis,
        tmp_path,
        shape=(3, 224, 224),
        batch_size=8,
        records=320,
        raw_batches=16,
    )
    judge(figures, "resnet18 3x224x224 batch 8", report_line)


def test_resnet18_batch8_one_thread(
    benchmark: Any,
    resnet18_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """Batch 8 with ONNX Runtime on one thread (params.threads: 1, raw alike), which leaves a
    core to Redis, the client and the worker's I/O threads: the cost of the serving path
    without the fight for cores. Reported, not judged."""
    figures = measure(
        benchmark,
        resnet18_dir,
        redis,
        tmp_path,
        shape=(3, 224, 224),
        batch_size=8,
        records=160,
        raw_batches=8,
        threads=1,
    )
    report_line(figures.line("resnet18 3x224x224 batch 8, 1 ORT thread"))


def test_resnet18_batch1(
    benchmark: Any,
    resnet18_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """The same at batch 1, to set beside batch 8; reported, not judged."""
    figures = measure(
        benchmark,
        resnet18_dir,
        redis,
        tmp_path,
        shape=(3, 224, 224),
        batch_size=1,
        records=160,
        raw_batches=64,
    )
    report_line(figures.line("resnet18 3x224x224 batch 1"))


def test_linear_end_to_end(
    benchmark: Any,
    linear_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """A model that costs next to nothing (1,000 floats -> Linear -> softmax, top-5): the
    records/s ceiling of the serving path itself. The ratio is there for scale only."""
    figures = measure(
        benchmark,
        linear_dir,
        redis,
        tmp_path,
        shape=(1000,),
        batch_size=8,
        records=6000,
        raw_batches=1000,
        chunk=200,
    )
    report_line(figures.line("linear 1000 -> 1000 batch 8 (end to end)"))
