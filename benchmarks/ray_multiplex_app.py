"""The Ray Serve side of ``test_vs_ray_multiplex.py``: Ray Serve's model multiplexing
(``@serve.multiplexed``, one model per request named by ``multiplexed_model_id``), serving the
same ONNX models loaded the way zoo_serving loads them, answering each record with its top-5
by the server's own code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve

import zoo_serving
from zoo_serving.serving.postprocess import top_n

_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


@serve.deployment
class Multi:
    """Loads model ``<root>/<id>/1`` on first use, keeps at most ``models`` per replica (LRU)."""

    def __init__(self, root: str) -> None:
        self.root = root

    @serve.multiplexed(max_num_models_per_replica=8)
    async def get_model(self, model_id: str) -> Any:
        return zoo_serving.load_model(f"{self.root}/{model_id}/1")

    async def __call__(self, record: np.ndarray) -> list[tuple[int, float]]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        scores = model.predict({"x": record[None]})["prob"]
        return top_n(scores.reshape(1, -1), 5)[0]


def deploy(root: str, *, replicas: int, max_ongoing_requests: int) -> Any:
    app = Multi.options(num_replicas=replicas, max_ongoing_requests=max_ongoing_requests)
    return serve.run(app.bind(root), name="multi", route_prefix=None, logging_config=_LOGGING)


def closed_loop(
    handle: Any,
    names: Sequence[str],
    records: Sequence[np.ndarray],
    *,
    clients: int,
    warmup_s: float,
    duration_s: float,
    seed: int = 0,
) -> tuple[float, dict[str, list[float]], int]:
    """``clients`` callers, each sending a record to a random model and the next as soon as
    it returns; (answers/s in the window, latencies in ms by model, errors)."""
    rng = np.random.default_rng(seed)
    t_measure = time.monotonic() + warmup_s
    t_stop = t_measure + duration_s
    by_model: dict[str, list[float]] = {n: [] for n in names}
    counts = {"answered": 0, "errors": 0}

    async def caller() -> None:
        while (sent_at := time.monotonic()) < t_stop:
            name = names[int(rng.integers(len(names)))]
            record = records[int(rng.integers(len(records)))]
            try:
                await handle.options(multiplexed_model_id=name).remote(record)
            except Exception:
                counts["errors"] += 1
            at = time.monotonic()
            if sent_at >= t_measure and at < t_stop:
                counts["answered"] += 1
                by_model[name].append((at - sent_at) * 1000.0)

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(clients)))

    asyncio.run(main())
    return counts["answered"] / duration_s, by_model, counts["errors"]
