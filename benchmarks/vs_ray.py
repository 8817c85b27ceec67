"""The machinery of ``test_vs_ray_serve.py``: the sides served (zoo_serving here, Ray Serve from
``ray_serve_app.py``), cycles of rounds at each load level, a meter of other load, answer
checks and the comparison.

A cycle times the model alone on ready batches (the ceiling of every side), then runs a
closed-loop round of every side at every level of :data:`LEVELS` (records in flight), both
sides driven from this process with the same records. A side's figure at a level is the
median over the cycles in which no round of that level was disturbed by other processes (see
:class:`TreeCpu`).

Imported by the test file beside it (pytest puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import zoo_serving
from harness import TOP_N, ForeignCpu, check_topn
from zoo_serving import Server
from zoo_serving.bench import LoadPoint, closed_loop
from zoo_serving.broker.embedded import ManagedRedis

SEED = 4321
BATCH = 8
MAX_WAIT_MS = 5
#: records in flight, on every side: 32 is the issue's level, where zoo_serving is bound by its
#: latency (its CPU half idle); 128 saturates both sides, so their best is their throughput
LEVELS = (32, 128)
EQUAL = 32  # the level the p99s are judged at: the same load on both sides
CYCLES = 3  # per model: the model alone, then a round of each side at each level
KEEP = 4  # answers per round checked against the raw model
RESULT_TIMEOUT_S = 30.0  # a record unanswered this long is missing, on either side
FOREIGN_MAX = 0.10  # a round is disturbed when other processes took more of the CPU than this
#: zoo sides -> params.runner: one worker process, as Ray serves from one replica process (Ray's
#: handle, like zoo's load loop, stays in this process). ``"zoo/threads": "threads"`` adds the
#: in-process layout (worker and load loop share one GIL): a third of the rounds more, for half
#: to 60% of this one's rate on the no-op model (the same on the CNN); left out for time
ZOO_RUNNERS = {"zoo/process": "processes"}
SIDES = (*ZOO_RUNNERS, "ray")  # the order of the rounds at a level
JUDGED = "zoo/process"  # the side held to the targets: the same process layout as Ray's

Round = tuple[int, str]  # (records in flight, side)


def record_input(index: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng((SEED, index)).standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------------ the sides


def zoo_config(
    redis: ManagedRedis,
    model_dir: Path,
    stream: str,
    runner: str,
    shape: tuple[int, ...],
    work_dir: Path,
) -> dict[str, dict[str, Any]]:
    """A zoo_serving config serving ``model_dir`` from ``stream`` with ``runner``."""
    config: dict[str, dict[str, Any]] = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis.url, "stream": stream},
        "params": {
            "batch_size": BATCH,
            "max_wait_ms": MAX_WAIT_MS,
            "top_n": TOP_N,
            "runner": runner,
        },
        "log": {"dir": str(work_dir / runner)},
    }
    if len(shape) == 3:
        config["data"]["shape"] = ",".join(map(str, shape))
    return config


# ------------------------------------------------------------------ measuring


class TreeCpu(ForeignCpu):
    """:class:`harness.ForeignCpu` for this process's whole tree (the redis-server and Ray's
    processes are its descendants): Ray starts processes of its own, so a list of pids will
    not do. Walks ``/proc`` for the tree at each sample."""

    def __init__(self) -> None:
        super().__init__([])

    def _ticks(self) -> list[int]:
        parent: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            parent[int(name)] = int(fields[1])
            ticks[int(name)] = int(fields[11]) + int(fields[12])  # utime, stime
        tree, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            tree.add(pid)
            todo += [p for p, pp in parent.items() if pp == pid and p not in tree]
        return [sum(ticks.get(p, 0) for p in tree)]


def raw_records_per_s(
    model: zoo_serving.Model, inputs: Sequence[dict[str, np.ndarray]], batches: int
) -> float:
    """Records/s of ``model.predict`` alone on ready batches of BATCH records."""
    name = model.inputs[0].name
    ready = [
        {name: np.stack([inputs[(b * BATCH + j) % len(inputs)]["input"] for j in range(BATCH)])}
        for b in range(2)
    ]
    model.predict(ready[0])  # untimed: caches and thread pool
    start = time.monotonic()
    for i in range(batches):
        model.predict(ready[i % 2])
    return batches * BATCH / (time.monotonic() - start)


def check_answers(
    model: zoo_serving.Model, inputs: Sequence[dict[str, np.ndarray]], point: LoadPoint
) -> None:
    """Every measured record answered, none failed, and the kept answers' top-5 are the raw
    model's (compared by value, so near-ties that trade places between batchings pass)."""
    assert point.answered > 0 and point.failed == 0 and point.missing == 0, point
    assert len(point.samples) == KEEP, point.samples
    indices = [i for i, _ in point.samples]
    batch = np.stack([inputs[i]["input"] for i in indices])
    scores = model.predict({model.inputs[0].name: batch})[model.outputs[0].name]
    for (i, answer), row in zip(point.samples, scores.reshape(len(indices), -1)):
        check_topn(answer, row, f"record {i}")


@dataclass(frozen=True)
class Cycle:
    """The model alone, then a round of each side at each level, with the CPU others took."""

    raw: float  # records/s of the model alone on ready batches: the ceiling of every side
    points: dict[Round, LoadPoint]
    foreign: dict[Round, float]  # share of the CPU other processes took during each round

    def clean(self, level: int) -> bool:
        """No round at ``level`` disturbed (the model alone is context: on the no-op model
        its few milliseconds are too short to meter)."""
        return max(self.foreign[level, side] for side in SIDES) <= FOREIGN_MAX


def run_cycles(
    benchmark: Any,
    redis: ManagedRedis,
    work_dir: Path,
    model_dir: Path,
    *,
    shape: tuple[int, ...],
    records: int,
    warmup_s: float,
    duration_s: float,
    raw_batches: int,
) -> list[Cycle]:
    """Serve ``model_dir`` on every side (Ray Serve already running: ``ray_serve_app``) and
    run CYCLES cycles (the model alone on ``raw_batches`` batches, then a round of every side
    at every level); check the answers of every round."""
    from ray import serve

    import ray_serve_app

    inputs = [{"input": record_input(i, shape)} for i in range(records)]
    timing = {"warmup_s": warmup_s, "duration_s": duration_s}
    cycles: list[Cycle] = []
    meter = TreeCpu()

    def cycle() -> None:
        raw = raw_records_per_s(model, inputs, raw_batches)
        points, foreign = {}, {}
        for level in LEVELS:  # the sides of a level back to back, so they meet the same load
            for side in SIDES:
                meter.start()
                load = {"clients": level, "keep": KEEP, "timeout_s": RESULT_TIMEOUT_S}
                if side == "ray":
                    point = ray_serve_app.closed_loop(handle, inputs, **load, **timing)
                else:
                    point = closed_loop(redis.url, streams[side], inputs, **load, **timing)
                points[level, side] = point
                foreign[level, side] = meter.share()
        cycles.append(Cycle(raw, points, foreign))

    app_name = f"vs-{model_dir.name}"
    streams = {side: f"vs-ray-{uuid.uuid4().hex[:8]}" for side in ZOO_RUNNERS}
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(zoo_serving.load_model(model_dir))
        for side, runner in ZOO_RUNNERS.items():
            config = zoo_config(redis, model_dir, streams[side], runner, shape, work_dir)
            stack.enter_context(Server(config))
        # a replica takes up to max_ongoing_requests at once (the rest wait in the handle):
        # enough for the highest level, so that @serve.batch has every record to batch from
        handle = ray_serve_app.deploy(
            str(model_dir), app_name, TOP_N, max_ongoing_requests=max(LEVELS)
        )
        stack.callback(serve.delete, app_name)
        benchmark.pedantic(cycle, rounds=CYCLES, iterations=1)
        for c in cycles:
            for point in c.points.values():
                check_answers(model, inputs, point)
    return cycles


# ------------------------------------------------------------------ comparing


@dataclass(frozen=True)
class Comparison:
    """The figures of every side at every level, and the ratios the targets are about:
    throughput at each side's best level, p99 at :data:`EQUAL` records in flight."""

    label: str
    target: float  # zoo/ray throughput to reach
    cycles: list[Cycle]

    def used(self, level: int) -> list[Cycle]:
        """The cycles a level's figures are medians over: its clean ones, or all if none is."""
        return [c for c in self.cycles if c.clean(level)] or self.cycles

    @property
    def reliable(self) -> bool:
        """Every level has an undisturbed cycle."""
        return all(any(c.clean(level) for c in self.cycles) for level in LEVELS)

    def get(self, side: str, level: int, what: str) -> float:
        """Median over the used cycles of a side's throughput or a latency percentile."""
        points = [c.points[level, side] for c in self.used(level)]
        if what == "throughput":
            return statistics.median(p.throughput for p in points)
        return statistics.median(p.latency_ms[what] for p in points)

    def best(self, side: str) -> int:
        """The level at which ``side`` answered the most records/s: its throughput."""
        return max(LEVELS, key=lambda level: self.get(side, level, "throughput"))

    def throughput(self, side: str) -> float:
        return self.get(side, self.best(side), "throughput")

    def speedup(self, side: str = JUDGED) -> float:
        """``side``'s throughput over Ray's, each at its best level."""
        return self.throughput(side) / self.throughput("ray")

    def p99_ratio(self, side: str = JUDGED, level: int = EQUAL) -> float:
        """Ray's p99 over ``side``'s at ``level``: above 1 when the zoo side's is lower."""
        return self.get("ray", level, "p99") / self.get(side, level, "p99")

    def basis(self) -> str:
        parts = []
        for level in LEVELS:
            foreign = max(c.foreign[level, side] for c in self.cycles for side in SIDES)
            used, rounds = len(self.used(level)), len(self.cycles)
            if not any(c.clean(level) for c in self.cycles):
                parts.append(f"{level}: UNRELIABLE, other load up to {foreign:.0%} every cycle")
            elif used < rounds:
                parts.append(f"{level}: median of {used} of {rounds} cycles, others disturbed")
            else:
                parts.append(f"{level}: median of {rounds} cycles, other load under {foreign:.0%}")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """A headline with the judged ratios, then each side at each level."""
        ray_best = self.best("ray")
        head = (
            f"{self.label} vs Ray Serve: {JUDGED} {self.throughput(JUDGED):,.0f} rec/s (best, "
            f"{self.best(JUDGED)} in flight) = {self.speedup():.2f}x ray's "
            f"{self.throughput('ray'):,.0f} ({ray_best} in flight) [target >= {self.target:g}x];"
            f" p99 at {EQUAL} in flight {self.get(JUDGED, EQUAL, 'p99'):.1f} ms vs ray's "
            f"{self.get('ray', EQUAL, 'p99'):.1f} = {self.p99_ratio():.2f}x lower [target > 1]; "
            f"model alone {statistics.median(c.raw for c in self.cycles):,.0f} rec/s; "
            f"batch {BATCH}; {self.basis()}"
        )
        lines = [head]
        for side in SIDES:
            levels = "; ".join(
                f"{level}: {self.get(side, level, 'throughput'):,.0f} rec/s, p50 "
                f"{self.get(side, level, 'p50'):.1f} ms, p99 {self.get(side, level, 'p99'):.1f} ms"
                + ("" if side == "ray" else self._against_ray(side, level))
                for level in LEVELS
            )
            role = {JUDGED: "judged", "ray": "baseline"}.get(side, "reported")
            ratio = "" if side == "ray" else f" = {self.speedup(side):.2f}x ray at best"
            lines.append(f"  {side} ({role}{ratio}) {levels}")
        return lines

    def _against_ray(self, side: str, level: int) -> str:
        rate = self.get(side, level, "throughput") / self.get("ray", level, "throughput")
        return f" ({rate:.2f}x ray's rate, p99 {self.p99_ratio(side, level):.2f}x lower)"

    def extra_info(self) -> dict[str, Any]:
        def point(p: LoadPoint) -> dict[str, Any]:
            return {
                "throughput": round(p.throughput, 2),
                **{k: round(v, 3) for k, v in p.latency_ms.items()},
                "answered": p.answered,
                "failed": p.failed,
                "server_ms": p.server_ms,  # zoo only: mean ms per record in each stage
                "mean_batch": p.mean_batch,
                "client_busy": p.client_busy,  # zoo only: the load loop's share of a core
            }

        info: dict[str, Any] = {}
        for side in SIDES:
            key = side.replace("/", "_")
            info[f"{key}_best_in_flight"] = self.best(side)
            for level in LEVELS:
                for what in ("throughput", "p50", "p99"):
                    name = "records_per_s" if what == "throughput" else f"{what}_ms"
                    info[f"{key}_{level}_{name}"] = round(self.get(side, level, what), 3)
            if side != "ray":
                info[f"{key}_throughput_ratio"] = round(self.speedup(side), 3)
                info[f"{key}_p99_ray_over_zoo"] = {
                    level: round(self.p99_ratio(side, level), 3) for level in LEVELS
                }
        return {
            **info,
            "judged": JUDGED,
            "throughput_ratio": round(self.speedup(), 3),
            "p99_ray_over_zoo": round(self.p99_ratio(), 3),
            "target_throughput_ratio": self.target,
            "in_flight": list(LEVELS),
            "p99_judged_in_flight": EQUAL,
            "batch_size": BATCH,
            "cycles": [
                {
                    "raw_records_per_s": round(c.raw, 2),
                    **{f"{s}@{n}": point(p) for (n, s), p in c.points.items()},
                    "foreign_cpu": {f"{s}@{n}": round(v, 3) for (n, s), v in c.foreign.items()},
                    "clean": {level: c.clean(level) for level in LEVELS},
                }
                for c in self.cycles
            ],
        }
