"""The Server handle, serve(), the embedded Redis and start-up errors."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import pytest

from helpers import assert_top_n, onnx_direct, wait_for
from zoo_serving import InputQueue, OutputQueue, Server, keys, serve
from zoo_serving.backends.torchscript import TorchScriptModel
from zoo_serving.broker.embedded import ManagedRedis, find_redis_server, free_port, port_answers
from zoo_serving.config import load_config
from zoo_serving.errors import (
    BrokerConnectionError,
    ModelError,
    ModelNotFoundError,
    ServerError,
)
from zoo_serving.server import request_stop


def test_embedded_redis_starts_and_stops_with_the_server(onnx_model_dir, tmp_path) -> None:
    port = free_port()  # data.embedded_port: no test needs 6379 free
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"shape": "3,32,32", "embedded_port": port},
        "log": {"dir": str(tmp_path)},
    }
    with Server(config) as server:
        assert server.embedded is not None and server.embedded.running
        assert port_answers("127.0.0.1", port)
        x = np.ones((3, 32, 32), np.float32)
        with InputQueue(config=config) as client:  # the config's defaults reach it
            answer = client.predict(x, timeout=30)
        assert_top_n(answer, onnx_direct(onnx_model_dir, x[None])[0], 1)
        assert (tmp_path / "redis" / "redis.log").exists()
    assert not port_answers("127.0.0.1", port)


def test_embedded_redis_keeps_queued_records_and_results_across_restarts(
    onnx_model_dir, tmp_path, stream
) -> None:
    """Records queued while no server runs, and results nobody fetched yet, survive a stop
    and a start of the embedded Redis (its append-only file in the work dir); a second
    server elsewhere does not silently adopt this server's embedded Redis."""
    port = free_port()
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"shape": "3,32,32", "embedded_port": port, "stream": stream},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(6).normal(0, 50, (8, 3, 32, 32)).astype(np.float32)
    uris = [f"queued-{i}" for i in range(len(xs))]
    with (
        ManagedRedis(tmp_path / "work" / "redis", port, persistent=True) as embedded,
        InputQueue(url=embedded.url, name=stream) as client,
    ):
        client.enqueue_many((uri, {"input": x}) for uri, x in zip(uris, xs))
    with Server(config) as server, OutputQueue(url=server.url, name=stream) as out:
        assert server.embedded is not None
        for uri, scores in zip(uris[:4], onnx_direct(onnx_model_dir, xs[:4])):
            assert_top_n(out.query(uri, timeout=30), scores, 1)
        wait_for(lambda: all(out.db.exists(keys.result(stream, u)) for u in uris[4:]))
        elsewhere = {**config, "log": {"dir": str(tmp_path / "other")}}
        with pytest.raises(ServerError, match="embedded redis-server of another"):
            Server(elsewhere).start()
    with (
        ManagedRedis(tmp_path / "work" / "redis", port, persistent=True) as embedded,
        OutputQueue(url=embedded.url, name=stream) as out,
    ):
        for uri, scores in zip(uris[4:], onnx_direct(onnx_model_dir, xs[4:])):
            assert_top_n(out.query(uri, timeout=1), scores, 1)


def test_a_leftover_redis_of_the_work_dir_is_taken_over_not_adopted(
    onnx_model_dir, tmp_path, stream
) -> None:
    """A redis-server still running in the work dir (its server killed where no parent-death
    signal exists, or by an older release) is stopped, keeping its data, and replaced by one
    the server owns; never used as if it were an external Redis."""
    import redis

    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    leftover = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
        + ["--pidfile", str(redis_dir / "redis.pid"), "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: port_answers("127.0.0.1", port) and client.set("zs-test-kept", "1"))
        wait_for(lambda: (redis_dir / "redis.pid").exists())
        config = {
            "model": {"path": str(onnx_model_dir)},
            "data": {"shape": "3,32,32", "embedded_port": port, "stream": stream},
            "log": {"dir": str(tmp_path)},
        }
        with Server(config) as server:
            assert leftover.wait(10) == 0  # stopped by the server's start
            assert server.embedded is not None and server.embedded.running
            assert client.get("zs-test-kept") == b"1"
        assert not port_answers("127.0.0.1", port)
        client.close()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


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


def test_a_model_the_framework_cannot_load_fails_start_with_a_model_error(
    redis_url, stream, tmp_path, caplog
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "net.onnx").write_bytes(b"not an onnx model")
    config = {
        "model": {"path": str(tmp_path / "broken")},
        "data": {"src": redis_url, "stream": stream},
        "log": {"dir": str(tmp_path)},
    }
    with pytest.raises(ModelError, match=r"cannot load onnx model .*net\.onnx: InvalidProtobuf"):
        Server(config).start(timeout_s=30)
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and not any(r.exc_info for r in failed)  # the message says it: no traceback


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


class ThreadsTorch(TorchScriptModel):
    """The torch backend, noting the intra-op threads PyTorch runs each batch with (in the
    thread that runs it: PyTorch's setting is per thread)."""

    seen: ClassVar[list[int]] = []

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(self._torch.get_num_threads())
        return super()._predict(batch)


def test_params_threads_reaches_the_framework(
    serve, onnx_model_dir, torch_model_dir, client
) -> None:
    """``params.threads: 3`` (this machine's defaults differ) is what ONNX Runtime's session
    and PyTorch run with, not just a number in the config."""
    import torch

    server = serve(onnx_model_dir, **{"params.threads": 3})
    session = server.runner._workers[0].model._session
    assert session.get_session_options().intra_op_num_threads == 3
    server.stop()
    before = torch.get_num_threads()  # process-wide: put back for the tests after this one
    ThreadsTorch.seen.clear()
    try:
        serve(torch_model_dir, **{"params.threads": 3, "model.backend": f"{__name__}:ThreadsTorch"})
        assert client.predict(np.zeros((3, 32, 32), np.float32), timeout=30)
    finally:
        torch.set_num_threads(before)
    assert len(ThreadsTorch.seen) == 2 and set(ThreadsTorch.seen) == {3}  # warm-up, record


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


def test_a_second_server_on_a_stream_refuses_another_model_and_joins_the_same(
    onnx_model_dir, torch_model_dir, redis_url, stream, tmp_path
) -> None:
    import shutil

    def config(model_dir, work: str) -> dict:
        return {
            "model": {"path": str(model_dir)},
            "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
            "log": {"dir": str(tmp_path / work)},
        }

    with Server(config(onnx_model_dir, "first")):
        other = Server(config(torch_model_dir, "other"))
        with pytest.raises(ServerError, match="served by another server with another model"):
            other.start()
        assert other.runner is None  # refused before any worker started
        copy = tmp_path / "copy"
        shutil.copytree(onnx_model_dir, copy)  # the same model in another directory
        with Server(config(copy, "second")) as second:
            assert [peer["work_dir"] for peer in second.peers] == [
                str((tmp_path / "first").resolve())
            ]
            x = np.ones((3, 32, 32), np.float32)
            with InputQueue(url=redis_url, name=stream) as client:
                assert_top_n(client.predict(x, timeout=30), onnx_direct(copy, x[None])[0], 1)
    with Server(config(torch_model_dir, "other")):  # the stream is free again
        pass


def test_a_worker_that_says_ready_is_already_in_the_heartbeats(
    onnx_model_dir, redis_url, redis_client, stream
) -> None:
    """Readiness and the worker's first heartbeat are written together, so a `status` right
    after `start` returned sees the worker it waited for."""
    from zoo_serving.broker.presence import Presence
    from zoo_serving.serving.worker import Worker

    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
    }
    worker = Worker(load_config(config)).load()  # loaded and warmed up; not yet running
    try:
        presence = Presence(redis_client, stream)
        assert presence.is_ready() and list(presence.live_heartbeats()) == [worker.name]
    finally:
        worker.close()
