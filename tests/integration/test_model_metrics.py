"""Metrics per model: /metrics labels each model's records, failures, batch sizes, stage
seconds, workers and queue with ``model``, and what workers hold of it (loaded versions, the
one serving, load seconds, memory) with ``model`` and ``version``, whatever runner runs the
workers; the unlabelled series keep summing every model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import scale_direct, scale_model, scrape
from zoo_serving import InputQueue, Server
from zoo_serving.broker.embedded import free_port


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    scale_model(root / "double" / "1" / "m.onnx", 2.0)
    scale_model(root / "neg" / "1" / "m.onnx", -1.0)
    scale_model(root / "neg" / "2" / "m.onnx", -2.0)
    (root / "neg" / "model.yaml").write_text("versions: all\n")
    return root


def wait_for(url: str, check: Any, timeout_s: float = 30.0) -> dict[str, dict[tuple, float]]:
    """/metrics once ``check(sample)`` holds (workers in other processes tell with their next
    heartbeat, the model states within a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sample = scrape(url)
        try:
            check(sample)
            return sample
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_metrics_per_model_and_version_under_every_runner(
    runner: str, repo: Path, redis_url: str, stream: str, tmp_path: Path
) -> None:
    raw = {
        "model": {"repository": str(repo)},
        "data": {"src": redis_url, "stream": stream, "shape": "4"},
        "params": {"top_n": 0, "batch_size": 4, "runner": runner, "workers": 2},
        "repository": {"default": "double"},
        "log": {"dir": str(tmp_path / "work"), "metrics_port": free_port()},
    }
    x = np.arange(4, dtype=np.float32)
    with Server(raw) as server:
        url = server.metrics.metrics_url
        assert url is not None
        with InputQueue(url=redis_url, name=stream, model="neg") as neg:
            for i in range(6):
                got = neg.predict(x + i)
                np.testing.assert_allclose(got, scale_direct(repo / "neg/2/m.onnx", x + i))
            neg.enqueue("bad", t=np.zeros(3, np.float32))  # wrong shape: an error result
        with InputQueue(url=redis_url, name=stream) as default:
            got = default.predict(x)
            np.testing.assert_allclose(got, scale_direct(repo / "double/1/m.onnx", x))

        def check(s: dict[str, dict[tuple, float]]) -> None:
            records = s["zoo_serving_model_records_total"]
            assert records[(("model", "neg"), ("outcome", "succeeded"))] == 6
            assert records[(("model", "neg"), ("outcome", "failed"))] == 1
            assert records[(("model", "double"), ("outcome", "succeeded"))] == 1
            assert records[(("model", "double"), ("outcome", "failed"))] == 0
            failures = s["zoo_serving_model_failures_total"]
            assert list(failures) == [(("model", "neg"), ("reason", "bad_shape"))]
            assert s["zoo_serving_model_batch_size_sum"][(("model", "neg"),)] == 6
            assert s["zoo_serving_records_succeeded_total"][()] == 7  # every model, unlabelled
            workers = s["zoo_serving_model_workers"]
            assert workers == {(("model", "double"),): 2, (("model", "neg"),): 2}
            assert s["zoo_serving_workers"][()] == 2  # a worker counts once, not per model
            loaded = s["zoo_serving_model_loaded"]
            assert loaded == {
                (("model", "double"), ("version", "1")): 2,
                (("model", "neg"), ("version", "1")): 2,
                (("model", "neg"), ("version", "2")): 2,
            }
            assert s["zoo_serving_model_serving"][(("model", "neg"), ("version", "2"))] == 2
            assert s["zoo_serving_model_serving"][(("model", "neg"), ("version", "1"))] == 0
            for model in ("double", "neg"):
                assert s["zoo_serving_model_load_seconds"][(("model", model),)] > 0
                assert s["zoo_serving_model_memory_bytes"][(("model", model),)] > 0
                assert s["zoo_serving_model_stream_lag"][(("model", model),)] == 0
                assert s["zoo_serving_model_pending"][(("model", model),)] == 0
                assert s["zoo_serving_model_evictions_total"][(("model", model),)] == 0

        wait_for(url, check)


def test_a_monitor_tick_reads_the_model_index_once(
    repo: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """One refresh of the metrics (the monitor's tick) reads the model index once, for the
    queue gauges and the heartbeats both (Redis's MONITOR sees every command)."""
    import threading

    from zoo_serving import keys
    from zoo_serving.observe import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MONITOR_S", 3600.0)  # only the refresh called here
    raw = {
        "model": {"repository": str(repo)},
        "data": {"src": redis_url, "stream": stream, "shape": "4"},
        "params": {"top_n": 0, "batch_size": 4, "workers": 1},
        "repository": {"default": "double"},
        "log": {"dir": str(tmp_path / "work"), "metrics_port": free_port()},
    }
    index_key = keys.models(stream)
    seen: list[str] = []
    with Server(raw) as server, redis_client.monitor() as monitor:
        listening = threading.Event()

        def listen() -> None:
            listening.set()
            while True:
                command = monitor.next_command()["command"]
                seen.append(command)
                if command == "ECHO zs-test-end":
                    return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        listening.wait(5)
        redis_client.echo("zs-test-begin")
        server.metrics.refresh()
        redis_client.echo("zs-test-end")
        thread.join(10)
    window = seen[seen.index("ECHO zs-test-begin") :]
    assert any(c.startswith("XINFO") for c in window), window  # the tick did run
    assert [c for c in window if c == f"HGETALL {index_key}"] == [f"HGETALL {index_key}"]
