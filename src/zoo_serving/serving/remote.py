"""What a worker needs in a process its runner does not share memory with (a spawned
process, a Ray actor): the config as a plain dict, the framework threads it may use, logging,
and a start-up error it can send back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
from typing import Any, NoReturn

from ..config import Config
from ..errors import ServerError

PACKAGE_LOGGER = "zoo_serving"
#: exit code of a worker process that left a model call stuck past params.batch_timeout_s
EXIT_STUCK = 75


def worker_threads(config: Config, cpus: int | None = None) -> int:
    """Framework threads of one worker: ``params.threads``, or when that is 0 the ``cpus``
    (default: this machine's cores) divided between ``params.workers`` workers, at least 1."""
    if config.params.threads > 0:
        return config.params.threads
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // config.params.workers)


def shipped_config(config: Config, *, resolve_threads: bool = True) -> dict[str, Any]:
    """``config`` as a plain dict for another process, with ``params.threads`` resolved for
    this machine when ``resolve_threads`` (leave it unresolved where the worker runs on another
    machine, and resolve it there with :func:`worker_threads`)."""
    raw = config.to_dict()
    if resolve_threads:
        raw["params"]["threads"] = worker_threads(config)
    # the work dir as this process resolves it (beside the config file, or from this
    # directory): a Spark or Ray worker runs in a directory of its own
    raw["log"]["dir"] = str(config.work_dir.absolute())
    return raw


def package_log_level() -> int:
    """The effective level of the ``zoo_serving`` logger here, for workers to use too."""
    return logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel()


def setup_worker_logging(config: Config, level: int, tag: str, *, error_log: bool) -> None:
    """Send the ``zoo_serving`` logs of a worker process to stderr (which its runner
    forwards) and, with ``error_log`` and ``log.error``, to the server's ``error.log``."""
    pkg = logging.getLogger(PACKAGE_LOGGER)
    pkg.setLevel(level)
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {tag} %(name)s: %(message)s")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    pkg.addHandler(stream)
    if error_log and config.log.error:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(config.work_dir / "error.log", encoding="utf-8")
        handler.setFormatter(fmt)
        pkg.addHandler(handler)
    pkg.propagate = False


def picklable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`ServerError` that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return ServerError(f"worker failed to start: {type(exc).__name__}: {exc}")


def leave_stuck_process() -> NoReturn:
    """End this worker process now: its worker left a model call stuck past
    ``params.batch_timeout_s``, which no thread can stop and a normal exit would wait on (or
    crash in, tearing the framework down under it). Logs are flushed first."""
    logging.getLogger(PACKAGE_LOGGER).error(
        "worker process %d exits with code %d: a model call is stuck", os.getpid(), EXIT_STUCK
    )
    for handler in logging.getLogger(PACKAGE_LOGGER).handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_STUCK)
