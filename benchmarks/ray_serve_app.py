"""The Ray Serve side of ``test_vs_ray_serve.py``: a local Ray with Serve, one replica serving a
zoo_serving model with ``@serve.batch``, answering each record with its top-N ``(class,
score)`` pairs, and the closed-loop load that drives it through its handle API.

The replica loads the model with :func:`zoo_serving.load_model` (the ONNX Runtime session
settings the zoo_serving server uses) and computes the answer with
:func:`zoo_serving.serving.postprocess.top_n`, the server's own code, so the two sides differ
only in how records reach the model and answers reach the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

import zoo_serving
from zoo_serving.bench import LoadPoint
from zoo_serving.serving.postprocess import top_n

# Ray Serve's documented settings for throughput: no per-request access log, warnings only
_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


@serve.deployment(num_replicas=1)
class TopN:
    """Batches single records (``[*record_shape]`` float32) and returns each one's top-N."""

    def __init__(self, model_dir: str, n: int) -> None:
        self.model = zoo_serving.load_model(model_dir)
        self.input = self.model.inputs[0].name
        self.output = self.model.outputs[0].name
        self.n = n

    async def __call__(self, record: np.ndarray) -> list[tuple[int, float]]:
        return await self.predict(record)

    # the zoo_serving side runs with params.batch_size: 8 and params.max_wait_ms: 5
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict(self, records: list[np.ndarray]) -> list[list[tuple[int, float]]]:
        # computed on the replica's event loop, as in Ray Serve's own batching examples
        scores = self.model.predict({self.input: np.stack(records)})[self.output]
        return top_n(scores.reshape(len(records), -1), self.n)


def app(model_dir: str, n: int, *, max_ongoing_requests: int) -> Any:
    """The application for ``serve.run``; ``max_ongoing_requests`` should cover every request
    the driver keeps in flight (Ray Serve's default of 5 would cap the batches at 5)."""
    return TopN.options(max_ongoing_requests=max_ongoing_requests).bind(model_dir, n)


@contextlib.contextmanager
def local_serve() -> Iterator[None]:
    """A local Ray of 2 CPUs with Serve started, its HTTP proxy off; shut down on exit. Set
    the ``RAY_*`` environment variables before entering (the test's fixture does)."""
    import ray

    here = str(Path(__file__).resolve().parent)
    python_path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local",  # never a cluster some other run left behind
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=256 * 1024 * 1024,
        # replicas import this module by name
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    try:
        serve.start(proxy_location="Disabled", logging_config=_LOGGING)
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def deploy(model_dir: str, name: str, n: int, *, max_ongoing_requests: int) -> Any:
    """Serve ``model_dir`` as app ``name`` (see :func:`app`); returns its handle."""
    app_ = app(model_dir, n, max_ongoing_requests=max_ongoing_requests)
    return serve.run(app_, name=name, route_prefix=None, logging_config=_LOGGING)


def closed_loop(
    handle: Any,
    inputs: Sequence[Mapping[str, np.ndarray]],
    *,
    clients: int,
    warmup_s: float,
    duration_s: float,
    keep: int = 0,
    timeout_s: float = 60.0,
) -> LoadPoint:
    """``clients`` callers on one event loop, each awaiting ``handle.remote(record)`` and calling
    again as soon as it returns; counted as :func:`zoo_serving.bench.closed_loop` counts: the
    throughput is the answers received inside the measured window, the latency that of the
    records sent inside it (send to answer), waited for after it."""
    t_measure = time.monotonic() + warmup_s
    t_stop = t_measure + duration_s
    latencies: list[float] = []
    samples: list[tuple[int, Any]] = []
    errors: dict[str, int] = {}
    count = {"seq": 0, "sent": 0, "answered": 0, "in_window": 0}

    async def caller() -> None:
        while (sent_at := time.monotonic()) < t_stop:
            index = count["seq"] % len(inputs)
            count["seq"] += 1
            measured = sent_at >= t_measure
            count["sent"] += measured
            try:
                answer = handle.remote(inputs[index]["input"])
                result: Any = await asyncio.wait_for(answer, timeout_s)
            except Exception as exc:  # counted as failed, like a zoo error result
                result = exc
            at = time.monotonic()
            count["in_window"] += t_measure <= at < t_stop
            if not measured:
                continue
            count["answered"] += 1
            latencies.append(at - sent_at)
            if isinstance(result, Exception):
                errors[type(result).__name__] = errors.get(type(result).__name__, 0) + 1
            if len(samples) < keep:
                samples.append((index, result))

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(clients)))

    asyncio.run(main())
    ms = np.array(latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]) if ms.size else (np.nan,) * 3
    return LoadPoint(
        mode="closed",
        clients=clients,
        rate=None,
        sent=count["sent"],
        answered=count["answered"],
        failed=sum(errors.values()),
        missing=count["sent"] - count["answered"],
        duration_s=duration_s,
        throughput=count["in_window"] / duration_s,
        latency_ms={
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(ms.max()) if ms.size else float("nan"),
            "mean": float(ms.mean()) if ms.size else float("nan"),
        },
        server_ms={},
        errors=errors,
        samples=tuple(samples),
    )
