"""Shared memory for clients on the server's host (protocol 3): tensors placed in a region
the client registers, records carrying references, answers equal to ONNX Runtime's; only
regions of the server's own user, 0600, registered from this host are read; a region is
freed when its client closes, and when its client dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import build_onnx_cnn
from helpers import assert_top_n, cli_env, onnx_direct
from zoo_serving import InputQueue, keys
from zoo_serving.aio import AsyncInputQueue
from zoo_serving.errors import DecodeError, ResultTimeoutError
from zoo_serving.shm.region import DIR

SIZE = 96  # 3 x 96 x 96 float32: 108 KiB a record, over the 64 KiB that go to shared memory


@pytest.fixture(scope="module")
def cnn96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_cnn(tmp_path_factory.mktemp("cnn96") / "cnn.onnx", size=SIZE).parent


def _xs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, 3, SIZE, SIZE)).astype(np.float32)


def _start(serve: Any, model: Path, **extra: Any) -> Any:
    return serve(model, **{"data.shape": f"3,{SIZE},{SIZE}", "params.batch_size": 4, **extra})


def test_tensors_go_by_shared_memory_and_answers_equal_onnxruntime(
    serve: Any, cnn96: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    xs = _xs(12, 1)
    direct = onnx_direct(cnn96, xs)
    with InputQueue(url=redis_url, name=stream, shared_memory=8 << 20) as q:
        region = DIR / q.arena.name
        assert region.stat().st_mode & 0o777 == 0o600 and region.stat().st_uid == os.geteuid()
        with pytest.raises(ResultTimeoutError):  # no server yet: look at the record waiting
            q.predict(xs[0], timeout=0.2)
        ((_id, fields),) = redis_client.xrange(stream)
        assert fields[b"zs"] == b"3" and fields[b"shm:t"].startswith(q.arena.name.encode())
        assert b"tensor:t" not in fields and sum(len(v) for v in fields.values()) < 1000
        _start(serve, cnn96)
        got = q.predict(list(xs), timeout=30)
        assert q.arena.slots.free == [(0, 8 << 20)]  # every slot back once the answers were in
    for i, result in enumerate(got):
        assert_top_n(result, direct[i], 3)
    assert not region.exists()  # close() freed it
    assert redis_client.hlen(keys.shm_regions(stream)) == 0


def test_the_asyncio_client_shares_memory_too(
    serve: Any, cnn96: Path, redis_url: str, stream: str
) -> None:
    _start(serve, cnn96)
    xs = _xs(16, 2)
    direct = onnx_direct(cnn96, xs)

    async def run() -> list[Any]:
        async with AsyncInputQueue(url=redis_url, name=stream, shared_memory=True) as q:
            return await asyncio.gather(*(q.predict(x, timeout=30) for x in xs))

    for i, result in enumerate(asyncio.run(run())):
        assert_top_n(result, direct[i], 3)


def test_only_regions_of_the_servers_user_mode_0600_and_registered_are_read(
    serve: Any, cnn96: Path, redis_url: str, stream: str
) -> None:
    _start(serve, cnn96)
    x = _xs(1, 3)[0]
    with InputQueue(url=redis_url, name=stream, shared_memory=1 << 20) as q:
        region = DIR / q.arena.name
        os.chown(region, 65534, 65534)  # as if another user had made it
        with pytest.raises(DecodeError, match="owned by uid 65534, not by the server's uid"):
            q.predict(x, timeout=30)
        os.chown(region, os.geteuid(), os.getegid())
        os.chmod(region, 0o644)
        with pytest.raises(DecodeError, match="has mode 0644: other users may open it"):
            q.predict(x, timeout=30)
        os.chmod(region, 0o600)
        q.arena._stop.set()  # no renewals: the lease is withdrawn as if the client were gone
        q.arena._renewer.join()
        from zoo_serving.shm import registry

        registry.unregister(q.arena._redis, stream, q.arena.name)
        with InputQueue(url=redis_url, name=stream, shared_memory=1 << 20) as other:
            # a fresh client's region works: the worker had not mapped q's before
            assert_top_n(other.predict(x, timeout=30), onnx_direct(cnn96, x[None])[0], 3)
        with pytest.raises(DecodeError, match="is not registered"):
            q.predict(x, timeout=30)


def test_a_region_is_closed_to_other_users(redis_url: str, stream: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    with InputQueue(url=redis_url, name=stream, shared_memory=1 << 20) as q:
        done = subprocess.run(
            ["cat", str(DIR / q.arena.name)],
            user=65534,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and "Permission denied" in done.stderr


CLIENT = """
import sys, time
from zoo_serving.config import DataConfig
from zoo_serving.shm.arena import Arena
arena = Arena(DataConfig(), sys.argv[1], sys.argv[2], 1 << 20, lease_s=1.0)
print(arena.name, flush=True)
time.sleep(600)
"""


def test_a_region_is_freed_when_its_client_dies(
    serve: Any, cnn96: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    _start(serve, cnn96)
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, redis_url, stream],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert client.stdout is not None
    name = client.stdout.readline().strip()
    client.stdout.close()
    region = DIR / name
    assert region.exists() and redis_client.hexists(keys.shm_regions(stream), name)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 15
    while region.exists() or redis_client.hexists(keys.shm_regions(stream), name):
        assert time.monotonic() < deadline, "the dead client's region was never freed"
        time.sleep(0.1)
