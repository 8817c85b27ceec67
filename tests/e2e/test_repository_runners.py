"""A model repository under the runners: a hot swap under load with a worker killed
(``kill -9``) in the middle of it, and nothing lost. Ray and Spark run the same check in
test_runners.py and test_spark.py, beside their engines' fixtures."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from helpers import SwapUnderLoad
from zoo_serving import Server


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_a_swap_under_load_with_a_worker_killed_loses_nothing(
    runner: str, tmp_path: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    swap = SwapUnderLoad(tmp_path / "models", redis_url, stream)
    with Server(swap.config(tmp_path / "work", runner)) as server:

        def kill() -> None:
            if runner == "processes":  # a worker dies in the middle of the swap
                os.kill(server.runner.pids[0], signal.SIGKILL)  # type: ignore[union-attr]

        swap.run(server, kill)
    swap.check(redis_client)
