"""The executor side of the ``spark`` runner: one Spark task, one worker serving until a
stop request (see :mod:`.spark`)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..broker.queue import consumer_name
from ..config import Config, load_config
from ..errors import ZooServingError
from ..serving.host import make_worker
from ..serving.remote import (
    PACKAGE_LOGGER,
    leave_stuck_process,
    picklable_error,
    setup_worker_logging,
)
from ..spark.session import ModelLocation

log = logging.getLogger("zoo_serving.runners.spark")  # as before the split


def serve_task(
    raw: dict[str, Any],
    job_id: str,
    model: ModelLocation | None,
    log_level: int,
    error_log: bool,
    server_id: str,
    index: int,
    _: Iterable[int],
) -> Iterator[tuple[str, Any]]:
    """One Spark task: one Worker serving until a stop request; yields ("done", counts) or
    ("error", the ZooServingError that kept it from starting)."""
    from pyspark import TaskContext

    config = load_config(raw)
    # this task's log handlers, removed when it ends: Spark reuses the process for others
    package = logging.getLogger(PACKAGE_LOGGER)
    before = set(package.handlers)
    setup_worker_logging(
        config, log_level, f"spark-worker-{index}[{os.getpid()}]", error_log=error_log
    )
    try:
        yield from _serve(config, job_id, model, index, TaskContext.get(), server_id)
    finally:
        for handler in [h for h in package.handlers if h not in before]:
            package.removeHandler(handler)
            handler.close()


def _serve(
    config: Config,
    job_id: str,
    model: ModelLocation | None,
    index: int,
    context: Any,
    server_id: str,
) -> Iterator[tuple[str, Any]]:
    # framework threads: params.threads, else the CPUs Spark gave this task (spark.task.cpus)
    threads = config.params.threads or (context.cpus() if context is not None else 1)
    try:
        config = config.replace(**{"params.threads": threads})
        if model is not None:  # a repository's versions are read where the server found them
            config = config.replace(**{"model.path": model.resolve()})
        name = consumer_name(f"{job_id}-{index}")
        worker = make_worker(config, name=name, leave_when_stuck=True, server_id=server_id)
    except ZooServingError as exc:
        yield ("error", picklable_error(exc))
        return
    try:
        try:
            worker.load()
        except ZooServingError as exc:  # retrying will not help: report it to the driver
            log.error("spark worker %d could not start: %s", index, exc)
            yield ("error", picklable_error(exc))
            return
        worker.run(threading.Event())  # its heartbeat thread watches the control key
    finally:
        worker.close()
    if worker.left_stuck:  # the task fails with its Python worker, and Spark retries it
        leave_stuck_process()
    stats = worker.stats
    counts = {"name": worker.name, "succeeded": stats.succeeded, "failed": stats.failed}
    yield ("done", {**counts, "models": worker.published_by_model()})
