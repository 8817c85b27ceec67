"""The Server handle, serve(), the embedded Redis and start-up errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helpers import assert_top_n, onnx_direct
from zoo_serving import InputQueue, Server, serve
from zoo_serving.broker.embedded import free_port, port_answers
from zoo_serving.config import load_config
from zoo_serving.errors import BrokerConnectionError, ModelNotFoundError
from zoo_serving.server import request_stop


def test_embedded_redis_starts_and_stops_with_the_server(onnx_model_dir, tmp_path) -> None:
    if port_answers("localhost", 6379):
        pytest.skip("something already listens on localhost:6379, the embedded default port")
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"shape": "3,32,32"},
        "log": {"dir": str(tmp_path)},
    }
    with Server(config) as server:
        assert server.embedded is not None and server.embedded.running
        assert port_answers("127.0.0.1", 6379)
        x = np.ones((3, 32, 32), np.float32)
        with InputQueue() as client:  # the defaults reach the embedded server
            answer = client.predict(x, timeout=30)
        assert_top_n(answer, onnx_direct(onnx_model_dir, x[None])[0], 1)
        assert (tmp_path / "redis" / "redis.log").exists()
    assert not port_answers("127.0.0.1", 6379)


def test_set_src_that_does_not_answer_is_an_error(onnx_model_dir, tmp_path) -> None:
    port = free_port()
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": f"localhost:{port}"},
        "log": {"dir": str(tmp_path)},
    }
    with pytest.raises(BrokerConnectionError, match=f"localhost:{port}.*does not answer"):
        Server(config).start()
    assert not port_answers("127.0.0.1", port)  # no silent fallback to an embedded server


def test_missing_model_fails_start_with_the_reason(redis_url, tmp_path) -> None:
    config = {
        "model": {"path": str(tmp_path / "nope")},
        "data": {"src": redis_url},
        "log": {"dir": str(tmp_path)},
    }
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Server(config).start(timeout_s=30)


def test_serve_blocks_until_a_stop_request(onnx_model_dir, redis_url, stream, tmp_path) -> None:
    config = load_config(
        {
            "model": {"path": str(onnx_model_dir)},
            "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
            "log": {"dir": str(tmp_path)},
        }
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(config)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    with InputQueue(url=redis_url, name=stream) as client:
        assert client.wait_ready(timeout=60)
        assert client.predict(np.zeros((3, 32, 32), np.float32), timeout=30)
        assert request_stop(config)
        thread.join(30)
        assert not thread.is_alive()
        assert not errors
        assert not client.is_ready()
    log_text = (tmp_path / "error.log").read_text()
    assert "server ready" in log_text and "server stopped" in log_text


def test_threads_workers_divide_the_cores(onnx_model_dir, redis_url, stream, tmp_path) -> None:
    """Two threads workers with ``params.threads: 0`` get half the cores each, and serve."""
    import os

    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": redis_url, "stream": stream},
        "params": {"workers": 2, "threads": 0},
        "log": {"dir": str(tmp_path)},
    }
    with Server(config) as server, InputQueue(url=redis_url, name=stream) as client:
        threads = [w.config.params.threads for w in server.runner._workers]
        assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2
        xs = np.random.default_rng(3).normal(0, 50, (6, 3, 32, 32)).astype(np.float32)
        for answer, scores in zip(
            client.predict(list(xs), timeout=30), onnx_direct(onnx_model_dir, xs)
        ):
            assert_top_n(answer, scores, 1)
