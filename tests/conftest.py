"""Shared test fixtures: a real redis-server per session, a clean keyspace per test, real models.

Tests are marked by directory: tests/unit -> unit, tests/integration -> integration,
tests/e2e -> e2e.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo_serving.broker.embedded import ManagedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in ("unit", "integration", "e2e"):
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` beside the checkout: the original system's real files."""
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES} (they live beside the checkout)")
    return FIXTURES


# ------------------------------------------------------------------ redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedRedis]:
    """A real redis-server on a free loopback port for the whole session."""
    server = ManagedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: ManagedRedis) -> str:
    """The session Redis, with an empty keyspace for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def stream() -> str:
    """A stream name unique to the test."""
    return f"s-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------ models


def build_onnx_cnn(path: Path, classes: int = 10, size: int = 32, seed: int = 0) -> Path:
    """A small random-weight NCHW CNN classifier (softmax out) exported from torch to ONNX."""
    import torch

    torch.manual_seed(seed)
    model = _torch_cnn(classes).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["prob"],
            dynamic_axes={"input": {0: "N"}, "prob": {0: "N"}},
            opset_version=17,
        )
    return path


def build_torchscript_cnn(path: Path, classes: int = 10, size: int = 32, seed: int = 0) -> Path:
    """The same kind of CNN saved as TorchScript."""
    import torch

    torch.manual_seed(seed)
    model = _torch_cnn(classes).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.trace(model, torch.zeros(1, 3, size, size))
    torch.jit.save(scripted, str(path))
    return path


def _torch_cnn(classes: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
        nn.Softmax(dim=1),
    )


@pytest.fixture(scope="session")
def onnx_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_cnn(tmp_path_factory.mktemp("onnx") / "cnn.onnx").parent


@pytest.fixture(scope="session")
def torch_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_torchscript_cnn(tmp_path_factory.mktemp("torch") / "cnn.pt").parent


def jpeg(seed: int, height: int = 48, width: int = 40) -> bytes:
    """A JPEG of smooth random colours (decodes the same everywhere)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@pytest.fixture
def serve(redis_url: str, stream: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a :class:`Server` for a model dir with config overrides; stopped after the test.

    ``serve(model_dir, **{"params.top_n": 3})`` -> the started Server.
    """
    yield from _servers({"src": redis_url, "stream": stream}, tmp_path)


@pytest.fixture
def serve_on(plane: Any, stream: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """:func:`serve` on the test's data plane (one Redis, or the cluster with partitions)."""
    yield from _servers(plane.data(stream), tmp_path)


def _servers(data: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from zoo_serving import Server

    servers: list[Any] = []

    def start(model_dir: Path, wait: bool = True, **dotted: Any) -> Any:
        raw: dict[str, dict[str, Any]] = {
            "model": {"path": str(model_dir)},
            "data": {**data, "shape": "3,32,32"},
            "params": {"batch_size": 4, "top_n": 3},
            "log": {"dir": str(tmp_path / "work")},
        }
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            raw.setdefault(section, {})[name] = value
        server = Server(raw)
        servers.append(server)
        return server.start(wait_ready=wait)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client(redis_url: str, stream: str) -> Iterator[Any]:
    from zoo_serving import InputQueue

    with InputQueue(url=redis_url, name=stream) as queue:
        yield queue


@pytest.fixture
def output(redis_url: str, stream: str) -> Iterator[Any]:
    from zoo_serving import OutputQueue

    with OutputQueue(url=redis_url, name=stream) as queue:
        yield queue


def env_without_coverage() -> dict[str, str]:
    """The environment for child processes (the venv's bin first on PATH)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(os.sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


# ------------------------------------------------------------------ redis cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real local Redis Cluster, 3 masters + 3 replicas, for the whole session."""
    from cluster import LocalCluster, tools_missing

    missing = tools_missing()
    if missing:
        pytest.skip(f"no Redis Cluster: {missing}")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster-p1", "cluster-p3"])
def plane(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The data plane of a guarantee test: the session Redis, or the Redis Cluster with
    data.partitions 1 or 3; a clean keyspace each time."""
    from cluster import Plane
    from zoo_serving.broker.connection import connect
    from zoo_serving.config import DataConfig

    if request.param == "single":
        url = request.getfixturevalue("redis_url")
        partitions = 1
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.url
        partitions = int(request.param.rsplit("p", 1)[1])
    db = connect(DataConfig(src=url))
    yield Plane(request.param, url, partitions, db)
    db.close()


# ------------------------------------------------------------------ ray


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray cluster on loopback (``ray start --head --block``, 2 CPUs): its address.

    Stopped by SIGTERM to the ``ray start`` process this fixture started, which stops the
    node's processes (``ray stop`` would stop every Ray on the machine).
    """
    ray_bin = Path(sys.executable).parent / "ray"
    port = free_port()
    out_path = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-port={free_port()}",
        "--num-cpus=2",
        "--object-store-memory=100000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback-only test cluster (see the docstring)
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while b"block forever" not in out_path.read_bytes():
            assert proc.poll() is None, f"ray start failed:\n{out_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray head not up:\n{out_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait()
