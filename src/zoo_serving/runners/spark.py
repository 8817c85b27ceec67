"""The ``spark`` runner: each worker is a long-running Spark task.

One Spark job of ``n`` single-element partitions runs ``n`` tasks; each task builds a
:class:`~zoo_serving.serving.worker.Worker` from the config shipped as a plain dict and runs the
same serving loop as every other runner until a stop request reaches it through the stream's
Redis control key; then the task returns its worker's counts and, once every task has, the job
ends.
The job runs in a background thread of the driver. Executors need zoo_serving and the model's
framework installed, and must reach Redis at ``data.src``; the model directory reaches them as
:func:`zoo_serving.spark.session.model_location` says (read in place on a local master, else
shipped with the job, or read from a shared path the driver cannot see).

How many workers (:func:`worker_count`): ``params.workers`` when set above 1, otherwise one per
task slot the ``spark.*`` keys give (:func:`zoo_serving.spark.session.task_slots`): ``local[N]``
-> N, ``local[*]`` -> this machine's cores, ``spark://`` -> ``spark.total_executor_cores``,
``yarn`` / ``k8s://`` -> ``num_executors`` x ``executor_cores``. A ``local`` count is capped at
this machine's cores, since more models than cores only share them. Each worker holds a task
slot for as long as it serves; keep slots free for other jobs of a shared session by setting
``params.workers`` below the slot count.

Failures: a task that dies (its Python worker killed, its executor lost) is retried by Spark
(``spark.task.maxFailures``, 4; local masters too, see :mod:`zoo_serving.spark.session`); the
records it had read wait in the consumer group and are taken over by live workers after
``params.claim_idle_ms``. A worker stuck in a batch past ``params.batch_timeout_s`` ends its
Python worker process, so its task fails and Spark retries it (each such failure counts toward
``spark.task.maxFailures``). A worker that cannot start (bad model, Redis unreachable) returns
its error instead, which :meth:`SparkRunner.raise_if_failed` raises in the driver.

Readiness comes from the workers' heartbeats in Redis (``keys.workers``): each worker of this
job has the job id in its consumer name. The driver and executors' clocks are assumed to agree
within a second or so (NTP), as for the control key.

Stopping writes the stream's control key (:func:`zoo_serving.broker.presence.request_stop`),
so every worker of the stream drains and stops, these tasks included; a job still running after
the stop timeout is cancelled.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any

from ..broker.connection import connect
from ..broker.presence import HEARTBEAT_TTL_S, Presence, request_stop
from ..config import Config, load_config
from ..errors import ConfigError, ServerError
from ..repository.control import RepositoryController
from ..serving.remote import (
    package_log_level,
    shipped_config,
)
from ..spark.session import (
    active_session,
    is_local,
    local_threads,
    model_location,
    require_pyspark,
    spark_session,
    task_slots,
)
from .base import Runner
from .spark_tasks import serve_task

__all__ = ["SparkRunner", "serve_on", "worker_count"]

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 30.0  # how long a cancelled job may take to end
_READY_POLL_S = 0.2


def worker_count(config: Config, master: str | None = None) -> int:
    """How many workers the spark runner runs for ``config`` on ``master`` (default
    ``spark.master``): ``params.workers`` when above 1, else one per task slot (see the
    module docstring)."""
    if config.params.workers > 1:
        return config.params.workers
    slots = task_slots(config, master)
    if local_threads(master or config.spark.master) is not None:
        slots = min(slots, os.cpu_count() or 1)
    return max(1, slots)


class SparkRunner(Runner):
    """Workers as long-running tasks of one Spark job.

    Args:
        config: the serving config (``params.runner`` is taken as ``spark``).
        session: a SparkSession to serve on (the user's, left running at stop); by default the
            active one, else one built from the ``spark.*`` keys and stopped at stop.
        error_log: workers on this machine (a local master) also write the server's
            ``error.log`` (with ``log.error``), as the other runners' workers do.
    """

    name = "spark"

    def __init__(self, config: Config, *, session: Any = None, error_log: bool = True) -> None:
        if config.params.runner != self.name:
            config = config.replace(**{"params.runner": self.name})
        super().__init__(config)
        self._session = session
        self._error_log = error_log
        self._own_session = False
        self._job_id = ""  # set at each start: the consumer names of this job's workers hold it
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []
        self._results: list[dict[str, Any]] = []
        self._stopping = False
        self._redis: Any = None
        self._ready = (0, 0.0)  # (count, monotonic time read)
        #: the repository's index and wanted state, when serve_on serves one (a Server runs its
        #: own); stopped with the runner
        self.repository: RepositoryController | None = None
        self._workers: int | None = None

    # ------------------------------------------------------------ size

    @property
    def workers(self) -> int:
        if self._workers is None:
            return worker_count(self.config, self._master())
        return self._workers

    def _master(self) -> str:
        if self._session is not None:
            return str(self._session.sparkContext.master)
        if "pyspark" in sys.modules:  # a session the user made is the one used
            active = active_session()
            if active is not None:
                return str(active.sparkContext.master)
        return self.config.spark.master

    # ------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        require_pyspark()
        from pyspark import InheritableThread

        self._stopping = False
        self._job_id = uuid.uuid4().hex[:8]
        self._errors.clear()
        self._results.clear()
        self._redis = connect(self.config.data)  # fails fast if Redis does not answer
        if self._session is None:
            self._session = active_session()
            if self._session is None:
                self._session = spark_session(self.config)
                self._own_session = True
            else:
                log.info(
                    "serving on the SparkSession already running (%s); the spark.* keys "
                    "apply only to a session the runner builds",
                    self._session.sparkContext.master,
                )
        sc = self._session.sparkContext
        self._workers = n = worker_count(self.config, sc.master)
        slots = local_threads(sc.master)
        if slots is not None and n > slots:
            raise ConfigError(
                f"params.workers: {n} workers need {n} task slots, spark master {sc.master} "
                f"has {slots}; raise N in local[N] or lower params.workers",
                key="params.workers",
                value=n,
            )
        path = self.config.model.path
        model = model_location(sc, path) if path else None
        job = functools.partial(
            serve_task,
            shipped_config(self.config, resolve_threads=False),
            self._job_id,
            model,
            package_log_level(),
            self._error_log and is_local(sc.master),
            self.server_id,
        )
        self._thread = InheritableThread(
            target=self._run_job, args=(sc, n, job), name=f"zoo-serving-spark-{self._job_id}"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("spark job %s: %d worker task(s) on %s", self._job_id, n, sc.master)

    def _run_job(self, sc: Any, n: int, job: Any) -> None:
        tag = f"zoo-serving-{self._job_id}"
        sc.addJobTag(tag)
        sc.setInterruptOnCancel(True)
        sc.setJobDescription(f"zoo_serving: {n} worker(s) on stream {self.config.data.stream}")
        try:
            results = sc.parallelize(range(n), n).mapPartitionsWithIndex(job).collect()
        except BaseException as exc:
            if not self._stopping:
                log.error("spark serving job %s failed: %s", self._job_id, _first_line(exc))
                self._errors.append(
                    ServerError(f"spark serving job failed: {_first_line(exc)}", job=self._job_id)
                )
            return
        finally:
            sc.removeJobTag(tag)
        for kind, value in results:
            if kind == "error":
                self._errors.append(value)
            else:
                self._results.append(value)
                if self.metrics is not None:  # its counts, the drain after its last beat too
                    self.metrics.worker_ended(value["name"], value["models"])
                log.info(
                    "spark worker %s ended: %d succeeded, %d failed",
                    value["name"],
                    value["succeeded"],
                    value["failed"],
                )

    def raise_if_failed(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _stop(self) -> None:
        self._stopping = True
        if not request_stop(self.config.data):
            log.warning("Redis does not answer: cancelling spark job %s", self._job_id)
            self._cancel()

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """Stop every worker of the stream (the control key), wait up to ``timeout_s`` for the
        tasks to drain and return, cancel the job if they did not, and release the session
        when this runner created it."""
        try:
            super().stop(timeout_s)
            if self._thread is not None and self._thread.is_alive():
                log.warning("spark job %s still running: cancelling it", self._job_id)
                self._cancel()
                self._thread.join(CANCEL_WAIT_S)
        finally:
            self._release()

    def _cancel(self) -> None:
        if self._session is not None:
            self._session.sparkContext.cancelJobsWithTag(f"zoo-serving-{self._job_id}")

    def _release(self) -> None:
        if self.repository is not None and not self._alive():
            self.repository.stop()
            self.repository.control.redis.close()
            self.repository = None
        if self._redis is not None:
            try:  # beats of workers that died without clearing them
                if not self._alive():
                    presence = Presence(self._redis, self.config.data.stream)
                    presence.forget(n for n in presence.heartbeats() if self._mark() in n)
            except Exception as exc:
                log.debug("could not clear old heartbeats: %s", exc)
            self._redis.close()
            self._redis = None
        if self._own_session and self._session is not None and not self._alive():
            self._session.stop()
            self._session = None
            self._own_session = False

    def join(self, timeout_s: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return not self._alive()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ready_count(self) -> int:
        count, read_at = self._ready
        now = time.monotonic()
        if self._redis is None or now - read_at < _READY_POLL_S:
            return count
        try:
            presence = Presence(self._redis, self.config.data.stream)
            count = presence.ready_workers(max_age_s=HEARTBEAT_TTL_S, named=self._mark())
        except Exception as exc:
            log.debug("reading heartbeats failed: %s", exc)
            return count
        self._ready = (count, now)
        return count

    def _mark(self) -> str:
        """What the consumer names of this job's workers hold."""
        return f"-{self._job_id}-"

    @property
    def results(self) -> list[dict[str, Any]]:
        """Per worker, once the job ended: its consumer name and records succeeded / failed."""
        return list(self._results)

    def __enter__(self) -> SparkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_on(
    spark: Any, config: Any, *, wait_ready: bool = True, timeout_s: float | None = 300.0
) -> SparkRunner:
    """Start serving on a SparkSession the caller already has; returns the running runner.

    The workers use ``spark``'s task slots (see :func:`worker_count`; ``params.workers``
    leaves slots free for other jobs) and Redis at ``data.src``, which the executors must
    reach. Their logs go to the executors' stderr (no ``error.log``). ``runner.stop()`` (or
    ``with``) stops the workers and leaves the session running.

    Example::

        runner = serve_on(spark, "config.yaml")
        ...
        runner.stop()

    Raises:
        ServerError: the workers did not get ready within ``timeout_s``.
        ZooServingError: the error a worker met starting (bad model, Redis unreachable).
    """
    config = load_config(config)
    runner = SparkRunner(config, session=spark, error_log=False)
    try:
        if config.model.repository:  # no Server here: publish the models workers follow
            runner.repository = RepositoryController(config, connect(config.data)).start()
        runner.start()
        if wait_ready and not runner.wait_ready(timeout_s):
            runner.raise_if_failed()
            raise ServerError(
                f"{runner.workers} spark worker(s) not ready within {timeout_s}s; are there "
                f"enough free task slots on {spark.sparkContext.master}?"
            )
    except BaseException:
        runner.stop(timeout_s=10.0)
        raise
    return runner


def _first_line(exc: BaseException) -> str:
    """The telling line of a Spark failure (Py4J wraps it in "An error occurred while ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Exception: " in line or "Error: " in line:
            return line[:500]
    return lines[0][:500] if lines else type(exc).__name__
