"""The machinery of the served-vs-raw benchmarks: a meter of other load on the machine,
alternating raw and served rounds, answer checks, and the verdict on a target.

Each benchmark loads the model in its own process for the raw figure (``Model.predict`` on
batches, the session settings the server uses) and serves the same model with
:class:`zoo_serving.Server`, while a :class:`ClientProcess` (``client_process.py``) enqueues
records and waits for every result. Raw segments and served rounds alternate (raw, served,
raw, ...); each round is set against the mean of the raw segments either side, and the figure
is the median over the rounds that other processes on the machine left alone (see
:class:`ForeignCpu`). Absolute rates are reported, never asserted; ``ZOO_BENCH_GATE=1`` turns
a target into an assertion.

Imported by the ``test_*.py`` files beside it (pytest puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo_serving
from client_process import ClientJob, ClientProcess
from payloads import IMAGE_SHAPE, ModelFeed
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis

GATE = os.environ.get("ZOO_BENCH_GATE") == "1"
TOP_N = 5
FOREIGN_MAX = 0.05  # a round is left out when other processes took more of the CPU than this
CORE_LABELS = ("server", "client", "redis")  # the processes measure() meters, in order


# ------------------------------------------------------------------ checking


def check_topn(served: Any, row: np.ndarray, what: str) -> None:
    """A served top-N answer is the model's own top-N for the same record. Scores are compared
    by value, so near-ties that trade places between batchings pass."""
    assert isinstance(served, list) and len(served) == TOP_N, f"{what}: {served!r}"
    prob = np.array([p for _, p in served])
    np.testing.assert_allclose(prob, row[[c for c, _ in served]], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(prob, np.sort(row)[::-1][:TOP_N], rtol=1e-4, atol=1e-7)


def check_spot(model: zoo_serving.Model, job: ClientJob, spot: dict[int, Any]) -> None:
    """The served top-N of a few records is the raw model's top-N for the same input (JPEGs
    decoded as the server decodes them)."""
    scores = ModelFeed(model, job.payload, job.shape, job.seed).scores(job.spot)
    for i, row in zip(job.spot, scores):
        check_topn(spot[i], row, f"record {i}")


# ------------------------------------------------------------------ measuring


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Spark's JVM and Python workers, the client,
    redis-server), from Linux ``/proc``; just ``pid`` where ``/proc`` is missing."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


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
        self._start: tuple[float, int, list[int]] | None = None

    def _sample(self) -> tuple[float, int, list[int]] | None:
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            ours = self._ticks()
        except (OSError, ValueError, IndexError):
            return None
        busy = cpu[0] + cpu[1] + cpu[2] + (cpu[7] if len(cpu) > 7 else 0)
        return time.monotonic(), busy, ours

    def _ticks(self) -> list[int]:
        """CPU clock ticks (user + system) of each of ours."""
        ours = []
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ours.append(int(fields[11]) + int(fields[12]))  # utime, stime
        return ours

    def start(self) -> None:
        self._start = self._sample()

    def share(self) -> float:
        """Foreign CPU since :meth:`start`, as a share of the whole machine (0..1)."""
        end = self._sample()
        if self._start is None or end is None:
            return 0.0
        wall_s = end[0] - self._start[0]
        ours = sum(end[2]) - sum(self._start[2])
        # each counter read is whole clock ticks: forgive a tick per counter, or a segment of
        # a tenth of a second shows 5% foreign load on an idle machine
        slack = len(end[2]) + 1
        foreign_s = ((end[1] - self._start[1]) - ours - slack) * self._TICK_S
        return max(foreign_s, 0.0) / (wall_s * (os.cpu_count() or 1))

    def cores(self) -> list[float]:
        """CPU of each of ``pids`` since :meth:`start`, in cores (CPU seconds / wall second):
        where a segment's CPU went."""
        end = self._sample()
        if self._start is None or end is None:
            return [0.0] * len(self.pids)
        wall_s = end[0] - self._start[0]
        return [(b - a) * self._TICK_S / wall_s for a, b in zip(self._start[2], end[2])]


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
    served_cores: list[list[float]] = field(default_factory=list)  # per round, per meter pid

    def raw_segment(self) -> None:
        job = self.client.job
        feed = ModelFeed(self.model, job.payload, self.shape, job.seed)
        self.meter.start()
        self.raw.append(feed.raw_records_per_s(self.batch_size, self.raw_batches))
        self.raw_foreign.append(self.meter.share())

    def served_round(self) -> None:
        """Timed by pytest-benchmark; the rate comes from the client's own clock."""
        self.meter.start()
        self.reports.append(self.client.run_round())
        self.served_cores.append(self.meter.cores())
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
            cores=[statistics.median(c[i] for i in clean) for c in zip(*self.served_cores)],
        )


def basis(rounds: int, clean: int, foreign: list[float]) -> str:
    """Which rounds a median is over, for a result line."""
    if clean == rounds:
        return f"median of {rounds} rounds"
    if clean:
        return f"median of {clean} of {rounds} rounds; others disturbed"
    return f"UNRELIABLE: other load took up to {max(foreign):.0%} of the CPU in every round"


@dataclass(frozen=True)
class Figures:
    raw: float
    served: float
    ratio: float
    batch_size: int
    ratios: list[float]
    foreign: list[float]  # per round: the largest foreign CPU share of it and its raw segments
    clean: list[int]  # rounds under FOREIGN_MAX, the ones the medians are over
    # CPU of the meter's processes in served rounds, in cores: this process (server and raw
    # model), the client, redis-server when metered in that order, as measure() does
    cores: list[float] = field(default_factory=list)
    # the worker's own stage times over every served record (see stage_ms)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def reliable(self) -> bool:
        return bool(self.clean)

    def line(self, label: str) -> str:
        return (
            f"{label}: served/raw = {self.ratio:.2f} (served {self.served:.1f} rec/s, "
            f"raw {self.raw:.1f} rec/s, batch {self.batch_size}; "
            f"{basis(len(self.ratios), len(self.clean), self.foreign)}){self.cpu_text()}"
        )

    def cpu_text(self) -> str:
        """Where the served rounds' CPU went, in cores, when measure() metered it."""
        if len(self.cores) != len(CORE_LABELS):
            return ""
        shares = ", ".join(f"{n} {c:.2f}" for n, c in zip(CORE_LABELS, self.cores))
        return f" [served CPU, cores: {shares}]"

    def rate_line(self, label: str) -> str:
        """The served rate first, for a model so cheap that served/raw means nothing."""
        return (
            f"{label}: served {self.served:,.0f} rec/s (raw {self.raw:,.0f} rec/s, batch "
            f"{self.batch_size}; {basis(len(self.ratios), len(self.clean), self.foreign)})"
            f"{self.cpu_text()}"
        )

    def extra_info(self) -> dict[str, Any]:
        """For pytest-benchmark's ``extra_info``."""
        return {
            "raw_records_per_s": round(self.raw, 2),
            "served_records_per_s": round(self.served, 2),
            "ratio": round(self.ratio, 4),
            "ratios": [round(r, 4) for r in self.ratios],
            "foreign_cpu": [round(f, 3) for f in self.foreign],
            "clean_rounds": self.clean,
            "batch_size": self.batch_size,
            "served_cpu_cores": dict(zip(CORE_LABELS, [round(c, 3) for c in self.cores])),
            "worker_stages_ms": self.stages,
        }

    def stage_line(self, label: str) -> str:
        return stage_line(label, self.stages)


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
    payload: str = "tensor",
    target: Callable[[Any, Any], None] | None = None,
    shared_memory: bool = False,
) -> Figures:
    """Alternate raw segments of ``raw_batches`` batches with served rounds of ``records``
    records sent by a client process (threads runner); check every result and a few answers.
    ``target``: the client process's function (``client_process.run_client``: enqueue all,
    then query all); ``shared_memory`` goes to it in the job."""
    stream = f"bench-{uuid.uuid4().hex[:12]}"
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": IMAGE_SHAPE},
        "params": {
            "batch_size": batch_size,
            "top_n": TOP_N,
            "max_wait_ms": 5,
            "threads": threads,
            "runner": "threads",
        },
        "log": {"dir": str(work_dir)},
    }
    job = ClientJob(
        url=redis.url,
        stream=stream,
        shape=shape,
        records=records,
        chunk=chunk,
        spot=(0, 1, records // 2, records - 1),
        payload=payload,
        shared_memory=shared_memory,
    )
    with zoo_serving.load_model(model_dir, threads=threads) as model, Server(config) as server:
        client = ClientProcess(job) if target is None else ClientProcess(job, target)
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
        stages = stage_ms(server)
    figures = dataclasses.replace(run.figures(), stages=stages)
    benchmark.extra_info.update(
        figures.extra_info(), records_per_round=records, payload=payload, threads=threads
    )
    return figures


def stage_line(label: str, stages: dict[str, float]) -> str:
    """The worker's mean stage times per record (:func:`stage_ms`), for a result line."""
    if not stages:
        return f"  {label}: no worker stage times"
    text = ", ".join(f"{k} {v:.3f}" for k, v in stages.items() if k != "mean_batch")
    return f"  {label}: worker per record, ms: {text}; mean batch {stages['mean_batch']:.2f}"


def stage_ms(server: Server) -> dict[str, float]:
    """The threads runner's workers' stage sums (what their heartbeats publish) as mean ms per
    record, and the mean batch size. Inference and postprocess are a batch's time, counted
    once per record in it; queue_wait is from the XADD (millisecond stream ids) to the batch."""
    stats = getattr(server.runner, "stats", [])
    records = sum(s.timed for s in stats)
    if not records:
        return {}
    out = {k: 1000.0 * sum(s.stage_s[k] for s in stats) / records for k in stats[0].stage_s}
    out["mean_batch"] = records / max(sum(s.batches for s in stats), 1)
    return {k: round(v, 4) for k, v in out.items()}


def verdict(
    ok: bool, reliable: bool, what: str, shortfall: str, label: str, stacklevel: int = 1
) -> None:
    """Below target, warn (or fail when ZOO_BENCH_GATE=1); an unreliable figure is never
    judged. Warnings start with ``what`` (like "served/raw"), so a test file lets them through
    with a ``filterwarnings`` mark on it; ``stacklevel`` as for the caller's own warning."""
    if not reliable:
        message = f"{what} not judged: other load disturbed every round ({label})"
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
        return
    if ok:
        return
    message = f"{what} {shortfall} ({label})"
    if GATE:
        pytest.fail(message)
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def judge(figures: Figures, label: str, report_line: Callable[[str], None], target: float) -> None:
    """Report a served/raw figure; below ``target``, warn (or fail when ZOO_BENCH_GATE=1)."""
    report_line(figures.line(label) + f" [target >= {target:.2f}]")
    report_line(figures.stage_line(label))
    shortfall = f"{figures.ratio:.2f} is below the target {target}"
    verdict(figures.ratio >= target, figures.reliable, "served/raw", shortfall, label, 2)
