"""``zoo-serve`` as a user runs it: init, start (background), status, log, stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo_serving import InputQueue
from zoo_serving.redis_server import port_answers


def zoo_serve(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoo_serving", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write_config(tmp_path: Path, model_dir: Path, **data: str) -> Path:
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
    write_config(tmp_path, onnx_model_dir, src=redis_url, stream=stream)
    before = zoo_serve("status", "--json", cwd=tmp_path)
    assert before.returncode == 1 and json.loads(before.stdout)["ready"] is False

    started = zoo_serve("start", cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started" in started.stdout
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


def test_start_and_stop_manage_the_embedded_redis(tmp_path, onnx_model_dir) -> None:
    if port_answers("localhost", 6379):
        pytest.skip("something already listens on localhost:6379, the embedded default port")
    write_config(tmp_path, onnx_model_dir)
    started = zoo_serve("start", cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert port_answers("127.0.0.1", 6379)
        assert zoo_serve("status", cwd=tmp_path).returncode == 0
        assert zoo_serve("log", "--redis", cwd=tmp_path).returncode == 0
    finally:
        assert zoo_serve("stop", cwd=tmp_path).returncode == 0
    assert not port_answers("127.0.0.1", 6379)


def test_bad_config_names_the_key(tmp_path, onnx_model_dir) -> None:
    (tmp_path / "config.yaml").write_text(
        f"model:\n  path: {onnx_model_dir}\nparams:\n  batch_size: lots\n"
    )
    result = zoo_serve("start", "--foreground", cwd=tmp_path)
    assert result.returncode == 2
    assert "params.batch_size" in result.stderr and "'lots'" in result.stderr


def test_start_reports_a_model_that_cannot_load(tmp_path, redis_url) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "config.yaml").write_text(
        f"model:\n  path: {tmp_path / 'empty'}\ndata:\n  src: {redis_url}\n"
    )
    result = zoo_serve("start", "--timeout", "60", cwd=tmp_path)
    assert result.returncode == 1
    assert "no model found" in result.stderr
