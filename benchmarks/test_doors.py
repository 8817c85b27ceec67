"""The front doors against the bench driver: the same server, the same records, one run
(issue 16, items 1 and 2).

One :class:`zoo_serving.Server` serves the no-op model (ONNX Identity on 1,000 floats, top-5
answers, batch 8, threads runner) with its HTTP front door on. A load process
(``doors_load.py``, spawned) drives it in rounds, one door after another, each closed loop for
3 s after 0.5 s of warm-up:

- **driver**: ``zoo_serving.bench.closed_loop``, 32 in flight: the reference;
- **aio**: 32 coroutines awaiting ``AsyncInputQueue.predict`` on one queue (target >= 0.9);
- **threads**: 16 threads calling ``InputQueue.predict`` on one queue (target >= 0.7);
- **batch64**: ``InputQueue.predict([64 records])`` from one thread (reported);
- **http_binary**: 32 keep-alive connections posting KServe v2 with Triton's binary tensors
  (target >= 0.8);
- **http_json**: the same as JSON (target >= 0.4).

A cycle runs every door once; each door's rate is set against the driver's in the same
cycle, and the figure is the median over cycles that other processes left alone (at most
10% of the CPU, from ``/proc``). Four answers of every round are checked against the
record's own top-5. Nothing about time is asserted unless ``ZOO_BENCH_GATE=1``::

    .venv/bin/pytest benchmarks/test_doors.py -s -p no:cacheprovider
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from doors_load import DoorsJob, drive, record, topn_of
from harness import ForeignCpu, check_topn, descendants, verdict
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis, free_port

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("default:front door:UserWarning"),
]

NAME = "noop"
CYCLES = 3
FOREIGN_MAX = 0.10
#: door -> the share of the driver's rate it should reach (None: reported only)
TARGETS: dict[str, float | None] = {
    "aio": 0.9,
    "threads": 0.7,
    "batch64": None,
    "http_binary": 0.8,
    "http_json": 0.4,
}


def _ask(conn: Any, message: Any, timeout_s: float = 120.0) -> Any:
    conn.send(message)
    if not conn.poll(timeout_s):
        raise TimeoutError(f"load process silent for {timeout_s}s")
    reply = conn.recv()
    if isinstance(reply, dict) and "crash" in reply:
        raise RuntimeError(f"load process failed:\n{reply['crash']}")
    return reply


def test_front_doors_against_the_driver(
    benchmark: Any,
    redis: ManagedRedis,
    noop_dir: Path,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    stream = "bench-doors"
    config = {
        "model": {"path": str(noop_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": "1000"},
        "params": {"batch_size": 8, "top_n": 5, "runner": "threads"},
        "http": {"port": free_port(), "model_name": NAME},
        "log": {"dir": str(tmp_path / "work"), "error": "n"},
    }
    ctx = multiprocessing.get_context("spawn")
    cycles: list[dict[str, float]] = []
    with Server(config) as server:
        job = DoorsJob(redis.url, stream, server.http.url, NAME)
        conn, child = ctx.Pipe()
        load = ctx.Process(target=drive, args=(child, job), daemon=True)
        load.start()
        child.close()
        assert redis.process is not None
        # ours: this process and all below it (the load, redis-server, the door's process)
        meter = ForeignCpu(descendants(os.getpid()))
        try:
            assert conn.poll(120) and conn.recv() == "ready"
            _ask(conn, "driver")  # warm every path once

            def cycle() -> None:
                meter.start()
                rates: dict[str, float] = {}
                for mode in ("driver", *TARGETS):
                    rate = _ask(conn, mode)
                    for index, answer in rate.spot:
                        check_topn(topn_of(answer), record(index), f"{mode} record {index}")
                    rates[mode] = rate.per_s
                rates["foreign"] = meter.share()
                cycles.append(rates)
                print(" ".join(f"{k} {v:.2f}" for k, v in rates.items()))

            benchmark.pedantic(cycle, rounds=CYCLES, iterations=1)
            conn.send(None)
        finally:
            load.join(30)
            if load.is_alive():
                load.kill()
    quiet = [c for c in cycles if c["foreign"] <= FOREIGN_MAX]
    used = quiet or cycles
    driver = statistics.median(c["driver"] for c in used)
    ratios = {m: statistics.median(c[m] / c["driver"] for c in used) for m in TARGETS}
    benchmark.extra_info.update(
        {"cycles": cycles, "ratios": ratios, "driver_records_per_s": driver}
    )
    rates = ", ".join(
        f"{m} {statistics.median(c[m] for c in used):.0f} ({ratios[m]:.2f})" for m in TARGETS
    )
    report_line(
        f"front doors vs the driver, no-op model top-5, batch 8, threads runner: driver "
        f"{driver:.0f} rec/s at 32 in flight; {rates}"
        + ("" if quiet else " UNRELIABLE: every cycle disturbed")
    )
    for mode, target in TARGETS.items():
        if target is not None:
            verdict(
                ratios[mode] >= target,
                bool(quiet),
                f"front door {mode}",
                f"{ratios[mode]:.2f} of the driver, below {target}",
                "no-op model, 32 in flight",
            )
