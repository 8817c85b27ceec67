"""The metrics sink's pieces that need no Redis: the last-minute window, the null sink, config."""

from __future__ import annotations

import pytest

from zoo_serving.config import load_config
from zoo_serving.errors import ConfigError
from zoo_serving.observe.metrics import Metrics
from zoo_serving.observe.stats import RateWindow


def test_rate_window_counts_the_last_minute_only() -> None:
    window = RateWindow(60)
    window.add(5, now=1000.2)
    window.add(3, now=1000.9)  # same second, same bucket
    window.add(2, now=1030.0)
    assert window.count(now=1030.5) == 10
    assert window.count(now=1059.9) == 10
    assert window.count(now=1060.0) == 2  # the first second has left the window
    assert window.count(now=1200.0) == 0


def test_a_sink_without_config_records_nothing() -> None:
    metrics = Metrics().start()
    metrics.worker_started("w", object())
    metrics.record_decode(b"1-0", 0.001)
    metrics.record_batch(4, 0.001, 0.002, 0.0005)
    metrics.record_written(4, 0.001)
    metrics.worker_stopped("w")
    assert metrics.metrics_url is None and metrics.summary_dir is None
    metrics.close()


def test_metrics_port_is_checked() -> None:
    cfg = load_config({"model": {"path": "m"}, "log": {"metrics_port": "9100"}})
    assert (cfg.log.metrics_port, cfg.log.metrics_host) == (9100, "127.0.0.1")
    assert load_config({"model": {"path": "m"}}).log.metrics_port == 0
    with pytest.raises(ConfigError, match=r"log.metrics_port: expected a TCP port.*70000"):
        load_config({"model": {"path": "m"}, "log": {"metrics_port": 70000}})
