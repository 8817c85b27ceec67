"""zoo_serving against Ray Serve through the public API on both sides (issue 16, item 5).

The same model on both sides (loaded with :func:`zoo_serving.load_model`, batch 8 with a 5 ms
wait, top-5 by :func:`zoo_serving.serving.postprocess.top_n`), the same records, the same
load shape (closed loop, 32 requests of one record in flight, from an asyncio loop in this
process), the same cores (this 2-core machine, one serving process each side):

- our asyncio client (``AsyncInputQueue.predict``) against Ray Serve's handle
  (``handle.remote``), each side's Python API;
- our HTTP door (KServe v2 JSON) against Ray Serve's HTTP proxy, the same JSON body from the
  same HTTP client, each side parsing it and answering the top-5 as a v2 output ``topn``.

zoo_serving runs the processes runner with one worker process and its HTTP door in a process
of its own; Ray Serve one replica and its proxy on a local Ray of 2 CPUs. A cycle runs one
round of every side; figures are medians over cycles. Four answers of every round are
compared with the raw model's top-5. Reported, never asserted::

    .venv/bin/pytest benchmarks/test_vs_ray_public.py -s -p no:cacheprovider
"""

from __future__ import annotations

import statistics
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo_serving
from harness import check_topn
from vs_ray import TreeCpu, record_input
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis, free_port

with warnings.catch_warnings():  # Ray Serve's own pydantic deprecations, raised at import
    warnings.simplefilter("ignore")
    from vs_ray_public import TOP, deploy, drive, local_serve

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

CYCLES = 2
SIDES = ("zoo/aio", "ray/handle", "zoo/http", "ray/http")
RECORDS = 64


@pytest.fixture(scope="module")
def ray_http() -> Iterator[int]:
    """Ray and Serve, its HTTP proxy on a free port, for the module; the environment as
    ``test_vs_ray_serve.py`` sets it (a loopback-only local Ray, replicas at nice 0)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_worker_niceness", "0")
        port = free_port()
        with local_serve(port):
            yield port


@pytest.mark.parametrize(
    ("model", "shape", "duration_s"),
    [("noop", (1000,), 3.0), ("resnet18", (3, 224, 224), 6.0)],
)
def test_public_apis_against_ray_serve(
    benchmark: Any,
    request: pytest.FixtureRequest,
    redis: ManagedRedis,
    ray_http: int,
    tmp_path: Path,
    report_line: Callable[[str], None],
    model: str,
    shape: tuple[int, ...],
    duration_s: float,
) -> None:
    from ray import serve

    model_dir: Path = request.getfixturevalue(f"{model}_dir")
    stream = f"vs-{uuid.uuid4().hex[:8]}"
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": ",".join(map(str, shape))},
        "params": {"batch_size": 8, "max_wait_ms": 5, "top_n": TOP, "runner": "processes"},
        "http": {"port": free_port(), "model_name": "model"},
        "log": {"dir": str(tmp_path / "work"), "error": "n"},
    }
    records = [record_input(i, shape) for i in range(RECORDS)]
    app = f"ray{model}"
    cycles: list[dict[str, Any]] = []
    meter = TreeCpu()
    with zoo_serving.load_model(model_dir) as raw, Server(config) as server:
        handle = deploy(str(model_dir), app)
        targets = {
            "zoo/aio": (redis.url, stream),
            "ray/handle": handle,
            "zoo/http": (server.http.url, "/v2/models/model/infer"),
            "ray/http": (f"http://127.0.0.1:{ray_http}", f"/{app}"),
        }
        try:

            def cycle() -> None:
                meter.start()
                figures = {s: drive(s, targets[s], records, 1.0, duration_s) for s in SIDES}
                figures["foreign"] = meter.share()
                cycles.append(figures)

            benchmark.pedantic(cycle, rounds=CYCLES, iterations=1)
        finally:
            serve.delete(app)
        for c in cycles:
            for side in SIDES:
                for index, answer in c[side]["samples"]:
                    scores = raw.predict({raw.inputs[0].name: records[index][None]})
                    row = scores[raw.outputs[0].name].reshape(-1)
                    pairs = [[int(i), float(p)] for i, p in np.asarray(answer).reshape(-1, 2)]
                    check_topn(pairs, row, f"{side} record {index}")

    def med(side: str, what: str) -> float:
        return statistics.median(c[side][what] for c in cycles)

    info = {f"{s}_{w}": round(med(s, w), 3) for s in SIDES for w in ("rate", "p50", "p99")}
    info["foreign"] = [round(c["foreign"], 3) for c in cycles]
    benchmark.extra_info.update(info)
    sides = "; ".join(
        f"{s} {med(s, 'rate'):,.0f} rec/s p50 {med(s, 'p50'):.1f} ms p99 {med(s, 'p99'):.1f} ms"
        for s in SIDES
    )
    report_line(
        f"{model} vs Ray Serve, public APIs, 32 in flight: python API zoo/ray "
        f"{med('zoo/aio', 'rate') / med('ray/handle', 'rate'):.2f}x, HTTP zoo/ray "
        f"{med('zoo/http', 'rate') / med('ray/http', 'rate'):.2f}x; {sides}; other load "
        f"{max(info['foreign']):.0%} at most"
    )
