"""``zoo-serve`` as a user runs it: init, start (background), status, log, stop."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import plain_config, plugin_backends, status_of, wait_for, zoo_serve
from zoo_serving import InputQueue, OutputQueue, Server, keys, procs
from zoo_serving.broker.embedded import free_port, port_answers


def write_config(tmp_path: Path, model_dir: Path, **data: object) -> Path:
    assert zoo_serve("init", "--model", str(model_dir), cwd=tmp_path).returncode == 0
    path = tmp_path / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["data"].update({"shape": "3,32,32", **data})
    path.write_text(yaml.safe_dump(raw))
    return path


def test_init_writes_a_commented_config_that_loads(tmp_path, onnx_model_dir) -> None:
    result = zoo_serve("init", "--model", str(onnx_model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "config.yaml").read_text()
    assert "# largest batch the model runs (default: 4)" in text
    again = zoo_serve("init", cwd=tmp_path)
    assert again.returncode == 1 and "exists" in again.stderr


def test_start_status_stop_round_trip(tmp_path, onnx_model_dir, redis_url, stream) -> None:
    path = write_config(tmp_path, onnx_model_dir, src=redis_url, stream=stream)
    metrics_port, http_port = free_port(), free_port()
    raw = yaml.safe_load(path.read_text())
    raw["log"]["metrics_port"] = metrics_port
    path.write_text(yaml.safe_dump(raw))
    before = zoo_serve("status", "--json", cwd=tmp_path)
    assert before.returncode == 1 and json.loads(before.stdout)["ready"] is False

    started = zoo_serve("start", "--http", str(http_port), cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started" in started.stdout
        assert f"metrics at http://127.0.0.1:{metrics_port}/metrics" in started.stdout
        assert f"HTTP front door at http://127.0.0.1:{http_port}" in started.stdout
        status = zoo_serve("status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout
        info = json.loads(status.stdout)
        assert info["ready"] and len(info["workers"]) == 1 and info["pid"]
        with InputQueue(url=redis_url, name=stream) as client:
            assert client.predict(np.zeros((3, 32, 32), np.float32), timeout=30)
            with pytest.raises(Exception, match="does not fit"):
                client.predict(np.zeros((3, 8, 8), np.float32), timeout=30)
        deadline = time.monotonic() + 10  # counts reach status with the next heartbeat (1 s)
        while "1 ok, 1 failed" not in (human := zoo_serve("status", cwd=tmp_path)).stdout:
            assert time.monotonic() < deadline, human.stdout
            time.sleep(0.2)
        assert "zoo-serve: ready" in human.stdout
        again = zoo_serve("start", cwd=tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = zoo_serve("stop", cwd=tmp_path)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = zoo_serve("status", cwd=tmp_path)
    assert after.returncode == 1 and "not running" in after.stdout
    log = zoo_serve("log", "-n", "200", cwd=tmp_path)
    assert log.returncode == 0
    assert "does not fit" in log.stdout and "server stopped" in log.stdout


def test_the_embedded_redis_dies_with_a_killed_server_and_keeps_its_data(
    tmp_path, onnx_model_dir, stream
) -> None:
    """On ``data.embedded_port`` (not 6379: no test needs that port free). A ``kill -9`` of the
    server takes its redis-server down (SIGTERM: the append-only file is written), and the
    next start has the result nobody fetched yet."""
    port = free_port()
    write_config(tmp_path, onnx_model_dir, embedded_port=port, stream=stream)
    url = f"redis://127.0.0.1:{port}"
    started = zoo_serve("start", cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"on {url} (embedded redis-server)" in started.stdout
    owner = json.loads((tmp_path / ".zoo-serving" / "redis" / "embedded.json").read_text())
    with InputQueue(url=url, name=stream) as client:
        client.enqueue("kept-1", t=np.ones((3, 32, 32), np.float32))
        wait_for(lambda: client.db.exists(keys.result(stream, "kept-1")), what="the result")
    os.kill(owner["server_pid"], signal.SIGKILL)
    wait_for(lambda: not procs.alive(owner["redis_pid"]), 10, "the redis-server to go")
    assert not port_answers("127.0.0.1", port)

    with Server(tmp_path / "config.yaml") as again, OutputQueue(url=url, name=stream) as out:
        assert again.embedded is not None  # the next start, in the same work dir
        assert out.query("kept-1", timeout=5)
        assert zoo_serve("log", "--redis", cwd=tmp_path).returncode == 0
    assert not port_answers("127.0.0.1", port)


def test_bad_config_names_the_key(tmp_path, onnx_model_dir) -> None:
    (tmp_path / "config.yaml").write_text(
        f"model:\n  path: {onnx_model_dir}\nparams:\n  batch_size: lots\n"
    )
    result = zoo_serve("start", "--foreground", cwd=tmp_path)
    assert result.returncode == 2
    assert "params.batch_size" in result.stderr and "'lots'" in result.stderr


def test_a_model_that_cannot_load_is_one_line_and_one_code_in_both_modes(
    tmp_path, redis_url, stream
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "net.onnx").write_bytes(b"not an onnx model")
    plain_config(tmp_path, {"path": "broken"}, {"src": redis_url, "stream": stream})
    background = zoo_serve("start", "--timeout", "60", cwd=tmp_path)
    foreground = zoo_serve("start", "--foreground", cwd=tmp_path)
    for result in (background, foreground):
        assert result.returncode == 3, result.stderr  # the server failed: same code either way
        summary = [line for line in result.stderr.splitlines() if line.startswith("zoo-serve:")]
        assert len(summary) == 1 and "net.onnx" in summary[0], result.stderr
        assert "Traceback" not in result.stderr


def test_status_before_ready_when_ready_and_after_stop(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream, monkeypatch
) -> None:

    plugin_backends(tmp_path, monkeypatch)
    gated = {"path": str(onnx_model_dir), "backend": "gated_backend:GatedOnnx"}
    plain_config(tmp_path, gated, {"src": redis_url, "stream": stream})

    assert status_of(tmp_path)[0] == 1
    waiting = zoo_serve("start", "--timeout", "0.5", cwd=tmp_path)
    try:
        assert waiting.returncode == 1 and "not ready after 0.5s" in waiting.stderr
        assert "loading and warming up the model" in waiting.stderr  # the warm-up's progress
        code, before = status_of(tmp_path)
        assert code == 1 and before["pid"] and not before["ready"] and not before["workers"]
        assert "zoo-serve: starting" in zoo_serve("status", cwd=tmp_path).stdout

        (tmp_path / "gate").touch()
        deadline = time.monotonic() + 60
        while (ready := status_of(tmp_path))[0] != 0:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert ready[1]["ready"] and len(ready[1]["workers"]) == 1
        assert ready[1]["lag"] == ready[1]["pending"] == ready[1]["dead_letter"] == 0

        redis_client.xadd(keys.dead_letter(stream), {"uri": "given-up"})
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue("good-1", t=np.zeros((3, 32, 32), np.float32))
            client.enqueue("bad-1", t=np.zeros((3, 8, 8), np.float32))
        deadline = time.monotonic() + 10  # counts reach status with the next heartbeat (1 s)
        while (serving := status_of(tmp_path))[1]["served"] < 2:
            assert time.monotonic() < deadline, serving
            time.sleep(0.2)
        assert serving[0] == 0 and serving[1]["dead_letter"] == 1
        assert serving[1]["throughput_1m"] > 0
        human = zoo_serve("status", cwd=tmp_path).stdout
        assert "dead letters: 1" in human and "records/s over the last minute" in human
    finally:
        assert zoo_serve("stop", cwd=tmp_path).returncode == 0
    code, after = status_of(tmp_path)
    assert code == 1 and not after["ready"] and after["pid"] is None and not after["workers"]

    log = zoo_serve("log", "-n", "500", cwd=tmp_path)
    assert log.returncode == 0
    assert "record failed uri=bad-1 code=bad_shape: " in log.stdout
    assert "uri=good-1" not in log.stdout


def test_start_with_tensorboard_prints_its_address(
    tmp_path, onnx_model_dir, redis_url, stream
) -> None:
    import re

    import httpx

    plain_config(tmp_path, {"path": str(onnx_model_dir)}, {"src": redis_url, "stream": stream})
    started = zoo_serve("start", "--tensorboard", cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        found = re.search(r"TensorBoard at (http://127\.0\.0\.1:(\d+)/)", started.stdout)
        assert found, started.stdout
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(found.group(1), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not answer"
            time.sleep(0.2)
        assert any((tmp_path / ".zoo-serving" / "summary").iterdir())  # log.summary was set
    finally:
        assert zoo_serve("stop", cwd=tmp_path).returncode == 0
    assert not port_answers("127.0.0.1", int(found.group(2)))
