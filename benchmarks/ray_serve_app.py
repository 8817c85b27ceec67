"""The Ray Serve side of ``test_vs_ray_serve.py``: one replica serving a zoo_serving model with
``@serve.batch``, answering each record with its top-N ``(class, score)`` pairs, and the
closed-loop load that drives it through its handle API.

The replica loads the model with :func:`zoo_serving.load_model` (the ONNX Runtime session
settings the zoo_serving server uses) and computes the answer with
:func:`zoo_serving.postprocess.top_n`, the server's own code, so the two sides differ only in
how records reach the model and answers reach the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray import serve

import zoo_serving
from zoo_serving.bench import LoadPoint
from zoo_serving.postprocess import top_n


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
