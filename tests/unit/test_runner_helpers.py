"""The runner registry and what runners ship to workers in other processes."""

from __future__ import annotations

import sys
import threading

import pytest

from zoo_serving.config import load_config
from zoo_serving.errors import ModelNotFoundError, ServerError
from zoo_serving.runners import create_runner
from zoo_serving.serving.remote import picklable_error, shipped_config, worker_threads


def config(**params: object):
    return load_config({"model": {"path": "/m"}, "params": params})


@pytest.mark.parametrize(
    ("runner", "cls"), [("processes", "ProcessesRunner"), ("ray", "RayRunner")]
)
def test_registry_finds_the_runner_without_importing_its_framework(runner, cls) -> None:
    had_ray = "ray" in sys.modules
    made = create_runner(config(runner=runner, workers=3))
    assert type(made).__name__ == cls and made.name == runner and made.workers == 3
    assert ("ray" in sys.modules) == had_ray  # Ray is imported when the runner starts


@pytest.mark.parametrize(
    ("threads", "workers", "cpus", "expected"),
    [(3, 2, 8, 3), (0, 2, 8, 4), (0, 3, 8, 2), (0, 4, 2, 1), (0, 1, 2, 2)],
)
def test_worker_threads_divides_the_cores_when_threads_is_0(
    threads, workers, cpus, expected
) -> None:
    assert worker_threads(config(threads=threads, workers=workers), cpus) == expected


def test_shipped_config_round_trips_with_threads_resolved(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  path: /m\nparams:\n  workers: 2\n")
    cfg = load_config(path)
    shipped = load_config(shipped_config(cfg))
    assert shipped.params.threads == worker_threads(cfg) >= 1
    assert shipped.work_dir == cfg.work_dir  # beside the file, not the worker's cwd
    assert load_config(shipped_config(cfg, resolve_threads=False)).params.threads == 0


def test_start_up_errors_cross_processes_as_themselves_or_named() -> None:
    ours = ModelNotFoundError("model.path: /m does not exist")
    assert picklable_error(ours) is ours
    foreign = RuntimeError(threading.Lock())  # a lock does not pickle
    sent = picklable_error(foreign)
    assert isinstance(sent, ServerError) and "RuntimeError" in str(sent)
