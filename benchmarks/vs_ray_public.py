"""The machinery of ``test_vs_ray_public.py``: zoo_serving and Ray Serve, each driven through
its public API only, the same model, the same records, the same load shape.

Four sides, each closed loop at :data:`IN_FLIGHT` requests of one record, from an asyncio loop
in the benchmark's process:

- ``zoo/aio``: :class:`zoo_serving.aio.AsyncInputQueue` ``await q.predict(record)``;
- ``ray/handle``: Ray Serve's ``DeploymentHandle``, ``await handle.remote(record)``;
- ``zoo/http``: the HTTP door, ``POST /v2/models/<name>/infer`` with a KServe v2 JSON body;
- ``ray/http``: Ray Serve's HTTP proxy, ``POST /<app>`` with the same body, parsed by the
  replica (a ``starlette`` request, as in Ray Serve's documentation).

Both HTTP sides get the same bytes from the same small client (``http_client.py``) and answer
the top-5 as a v2 output ``topn``. zoo_serving runs one worker process (processes runner) and
one door process; Ray Serve one replica and its proxy, on a local Ray of 2 CPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

import zoo_serving
from http_client import HttpConnection, v2_request
from zoo_serving.serving.postprocess import top_n

IN_FLIGHT = 32
BATCH = 8
TOP = 5
_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


@serve.deployment(num_replicas=1)
class TopNDoor:
    """One record in, its top-N out: by handle (an ndarray) or over HTTP (a KServe v2 JSON
    body with one ``[1, *record]`` FP32 input, answered as a v2 output ``topn``)."""

    def __init__(self, model_dir: str, n: int) -> None:
        self.model = zoo_serving.load_model(model_dir)
        self.input = self.model.inputs[0].name
        self.output = self.model.outputs[0].name
        self.n = n

    async def __call__(self, request: Any) -> Any:
        if isinstance(request, np.ndarray):  # the handle
            return await self.predict(request)
        body = json.loads(await request.body())
        spec = body["inputs"][0]
        record = np.asarray(spec["data"], np.float32).reshape(spec["shape"][1:])
        pairs = await self.predict(record)
        return {
            "model_name": "ray",
            "outputs": [
                {
                    "name": "topn",
                    "shape": [1, len(pairs), 2],
                    "datatype": "FP32",
                    "data": [v for pair in pairs for v in pair],
                }
            ],
        }

    # the zoo_serving side runs with params.batch_size: 8 and params.max_wait_ms: 5
    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=0.005)
    async def predict(self, records: list[np.ndarray]) -> list[list[tuple[int, float]]]:
        scores = self.model.predict({self.input: np.stack(records)})[self.output]
        return top_n(scores.reshape(len(records), -1), self.n)


@contextlib.contextmanager
def local_serve(http_port: int) -> Iterator[None]:
    """A local Ray of 2 CPUs with Serve and its HTTP proxy on ``http_port``."""
    import ray

    here = str(Path(__file__).resolve().parent)
    python_path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=256 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    try:
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": http_port},
            logging_config=_LOGGING,
        )
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def deploy(model_dir: str, name: str) -> Any:
    app = TopNDoor.options(max_ongoing_requests=4 * IN_FLIGHT).bind(model_dir, TOP)
    return serve.run(app, name=name, route_prefix=f"/{name}", logging_config=_LOGGING)


class Window:
    """Closed-loop counting: answers inside the window, latency of the requests sent in it."""

    def __init__(self, warmup_s: float, duration_s: float) -> None:
        self.start = time.monotonic() + warmup_s
        self.end = self.start + duration_s
        self.duration_s = duration_s
        self.in_window = 0
        self.latencies: list[float] = []
        self.samples: list[tuple[int, Any]] = []

    def sending(self) -> bool:
        return time.monotonic() < self.end

    def done(self, index: int, sent_at: float, answer: Any) -> None:
        at = time.monotonic()
        if self.start <= at < self.end:
            self.in_window += 1
        if sent_at >= self.start:
            self.latencies.append(at - sent_at)
        if len(self.samples) < 4:
            self.samples.append((index, answer))

    def figures(self) -> dict[str, Any]:
        ms = np.array(self.latencies) * 1000.0
        p50, p99 = np.percentile(ms, [50, 99]) if ms.size else (float("nan"),) * 2
        return {
            "rate": self.in_window / self.duration_s,
            "p50": float(p50),
            "p99": float(p99),
            "samples": self.samples,
        }


def drive(
    side: str, target: Any, records: list[np.ndarray], warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """One closed-loop round of ``side``: ``target`` is ``(redis url, stream)`` for
    ``zoo/aio``, the handle for ``ray/handle``, ``(base url, path)`` for the HTTP sides."""
    bodies = [v2_request(r[None], False) for r in records]

    async def main() -> dict[str, Any]:
        window = Window(warmup_s, duration_s)
        queue = None
        if side == "zoo/aio":
            from zoo_serving.aio import AsyncInputQueue

            queue = AsyncInputQueue(url=target[0], name=target[1])

        async def call(conn: Any, index: int) -> Any:
            if queue is not None:
                return await queue.predict(records[index], timeout=60)
            if conn is None:
                return await target.remote(records[index])
            body, headers = bodies[index]
            return (await conn.post_v2(target[1], body, headers))["topn"]

        async def caller(k: int) -> None:
            conn = await HttpConnection.open(target[0]) if side.endswith("/http") else None
            i = k
            try:
                while window.sending():
                    index = i % len(records)
                    sent_at = time.monotonic()
                    window.done(index, sent_at, await call(conn, index))
                    i += IN_FLIGHT
            finally:
                if conn is not None:
                    conn.close()

        try:
            await asyncio.gather(*(caller(k) for k in range(IN_FLIGHT)))
        finally:
            if queue is not None:
                await queue.close()
        return window.figures()

    return asyncio.run(main())
