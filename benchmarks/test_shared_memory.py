"""Shared memory against Redis for a client on the server's host (issue 16, item 3).

The ResNet-18-sized CNN (3x224x224 float32, 602 KB a record) at batch 8, threads runner,
served to a client process of the public asyncio API, 32 records in flight
(``client_process.run_predict_client``): once with ``AsyncInputQueue(shared_memory=...)``
(tensors in a region of ``/dev/shm``, records carrying references), once through Redis
(the same client without it). Each is measured as ``test_throughput.py`` measures served/raw:
raw segments of ``Model.predict`` on ready batches alternate with served rounds, and the
figure is the median over rounds other load left alone. Targets: through shared memory
served/raw >= 0.98; through Redis >= 0.95. Reported, never asserted unless
``ZOO_BENCH_GATE=1``::

    .venv/bin/pytest benchmarks/test_shared_memory.py -s -p no:cacheprovider
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client_process import run_predict_client
from harness import judge, measure
from zoo_serving.broker.embedded import ManagedRedis

TARGETS = {True: 0.98, False: 0.95}  # shared memory, Redis

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.filterwarnings("default:served/raw:UserWarning"),
]


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "redis"])
def test_resnet18_batch8_through_shared_memory_or_redis(
    benchmark: Any,
    resnet18_dir: Path,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
    shared_memory: bool,
) -> None:
    figures = measure(
        benchmark,
        resnet18_dir,
        redis,
        tmp_path,
        shape=(3, 224, 224),
        batch_size=8,
        records=320,
        raw_batches=16,
        target=run_predict_client,
        shared_memory=shared_memory,
    )
    way = "shared memory" if shared_memory else "Redis"
    label = f"resnet18 3x224x224 batch 8, asyncio client at 32 in flight, through {way}"
    judge(figures, label, report_line, TARGETS[shared_memory])
