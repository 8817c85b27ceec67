"""The metrics' pieces that need no Redis: the last-minute window, the histograms a worker
keeps, a server's fleet of workers (in-process and elsewhere), the null sink, config."""

from __future__ import annotations

import time

import pytest

from zoo_serving.config import load_config
from zoo_serving.errors import ConfigError
from zoo_serving.observe.fleet import Fleet
from zoo_serving.observe.metrics import Metrics
from zoo_serving.observe.stats import BATCH_SIZE, Histogram, RateWindow, WorkerStats


def test_rate_window_counts_the_last_minute_only() -> None:
    window = RateWindow(60)
    window.add(5, now=1000.2)
    window.add(3, now=1000.9)  # same second, same bucket
    window.add(2, now=1030.0)
    assert window.count(now=1030.5) == 10
    assert window.count(now=1059.9) == 10
    assert window.count(now=1060.0) == 2  # the first second has left the window
    assert window.count(now=1200.0) == 0


def test_histogram_buckets_are_prometheus_le_bounds() -> None:
    hist = Histogram((1, 2, 4))
    for value in (0.5, 1, 1.5, 2, 3, 4, 5, 100):
        hist.observe(value)
    # (..1], (1..2], (2..4], (4..+Inf)
    assert hist.published() == {"counts": [2, 2, 2, 2], "sum": 117.0}


def batch(stats: WorkerStats, n: int, infer_s: float = 0.01) -> None:
    stats.add_batch([0.001] * n, [0.002] * n, infer_s, 0.001)
    stats.add_written(n, 0.0005 * n, 0.0003)


def test_worker_stats_publish_counts_sums_and_histograms() -> None:
    stats = WorkerStats()
    batch(stats, 8)
    batch(stats, 3)
    out = stats.published()
    assert out["written"] == 11 and out["served_1m"] == 11
    assert out["stages"]["records"] == 11
    sizes = out["hist"][BATCH_SIZE]
    assert sizes["sum"] == 11 and sum(sizes["counts"]) == 2  # two batches, not 11 records
    assert sum(out["hist"]["decode"]["counts"]) == 11  # per record
    assert sum(out["hist"]["inference"]["counts"]) == 2  # per batch
    assert out["hist"]["inference"]["sum"] == pytest.approx(0.02)


def beat(stats: WorkerStats, server: str, age_s: float = 0.0) -> dict:
    return {"server": server, "ts": time.time() - age_s, **stats.published()}


def test_a_fleet_sums_its_own_workers_wherever_they_run_and_never_goes_down() -> None:
    local, remote, other = WorkerStats(), WorkerStats(), WorkerStats()
    batch(local, 4)
    batch(remote, 8)
    batch(other, 16)
    remote.failed += 1
    remote.failures_by_code["decode"] += 1
    fleet = Fleet("me")
    fleet.started("here-1", local)
    fleet.absorb(
        {
            "there-1": beat(remote, "me"),
            "there-2": beat(other, "another server"),  # not this server's worker
            "here-1": beat(WorkerStats(), "me"),  # in-process: counted from its stats
        }
    )
    totals = fleet.totals()
    assert totals.written == 12 and totals.failed == {"decode": 1}
    assert totals.batched == 12 and sum(totals.hist[BATCH_SIZE][0]) == 2
    assert fleet.serving() == 2

    batch(remote, 8)  # drained after its last beat, handed back by its runner when it ended
    fleet.ended("there-1", {"": remote.published()})
    fleet.absorb({"there-1": beat(WorkerStats(), "me")})  # an older beat is no news now
    fleet.stopped("here-1")
    totals = fleet.totals()
    assert totals.written == 20 and totals.batched == 20  # kept after they stopped
    assert fleet.serving() == 0


def test_a_fleet_counts_each_model_apart_and_a_worker_once() -> None:
    """A model host serves two models under one name, one in this process, one elsewhere:
    totals per model and together, and one worker per name."""
    a, b, far = WorkerStats(), WorkerStats(), WorkerStats()
    batch(a, 4)
    batch(b, 2)
    batch(far, 8)
    fleet = Fleet("me")
    fleet.started("host-1", a, model="a")
    fleet.started("host-1", b, model="b")
    fleet.absorb({"host-2": beat(far, "me"), "host-1": beat(WorkerStats(), "me")}, model="a")
    assert (fleet.totals("a").written, fleet.totals("b").written) == (12, 2)
    assert fleet.totals().written == 14 and fleet.totals("c").written == 0
    assert fleet.models() == ["a", "b"] and fleet.serving() == 2
    batch(far, 8)
    fleet.ended("host-2", {"a": far.published()})
    assert fleet.totals("a").written == 20 and fleet.serving() == 1  # host-1 serves on


def test_a_worker_whose_beat_went_stale_is_not_serving() -> None:
    fleet = Fleet("me")
    fleet.absorb({"gone": beat(WorkerStats(), "me", age_s=60)})
    assert fleet.serving() == 0


def test_a_sink_without_config_records_nothing() -> None:
    metrics = Metrics().start()
    stats = WorkerStats()
    metrics.worker_started("w", stats)
    batch(stats, 4)
    metrics.worker_stopped("w")
    assert metrics.metrics_url is None and metrics.summary_dir is None
    metrics.close()


def test_metrics_port_is_checked() -> None:
    cfg = load_config({"model": {"path": "m"}, "log": {"metrics_port": "9100"}})
    assert (cfg.log.metrics_port, cfg.log.metrics_host) == (9100, "127.0.0.1")
    assert load_config({"model": {"path": "m"}}).log.metrics_port == 0
    with pytest.raises(ConfigError, match=r"log.metrics_port: expected a TCP port.*70000"):
        load_config({"model": {"path": "m"}, "log": {"metrics_port": 70000}})
