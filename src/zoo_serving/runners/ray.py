"""The ``ray`` runner: workers as Ray actors, on a local Ray or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from ..broker.presence import request_stop
from ..config import Config, load_config
from ..errors import MissingDependencyError, ServerError
from ..serving.remote import package_log_level, setup_worker_logging, shipped_config, worker_threads
from .base import Runner

log = logging.getLogger(__name__)

#: object store of a local Ray: records never go through it, so keep it small
OBJECT_STORE_BYTES = 128 * 1024 * 1024
WATCH_S = 0.5  # how often the runner looks for actors to replace


class WorkerActor:
    """One :class:`~zoo_serving.Worker` in a Ray actor (wrapped with ``ray.remote`` by
    :class:`RayRunner`). The model is loaded once, by :meth:`load`; :meth:`run` serves in one of
    the actor's threads until :meth:`stop`, which sets the stop event and waits for the drain.

    An actor on the server's own host (a local Ray, or a cluster node on that machine) writes
    the server's ``error.log`` too (with ``log.error``), as the processes runner's workers do;
    on another host the work directory is not there, and its lines go to its Ray worker log
    (which Ray forwards to the server's console).
    """

    def __init__(
        self,
        raw_config: dict[str, Any],
        index: int,
        log_level: int,
        server_id: str = "",
        server_host: str = "",
    ) -> None:
        config = load_config(raw_config)
        # threads are resolved here, on the node the actor landed on
        self.config = config.replace(**{"params.threads": worker_threads(config)})
        self.index = index
        self.server_id = server_id
        self.worker: Any = None
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._finished = threading.Event()
        setup_worker_logging(
            self.config,
            log_level,
            f"ray-worker-{index}[{os.getpid()}]",
            error_log=socket.gethostname() == server_host,
        )

    def load(self) -> dict[str, Any]:
        """Connect and load the model; returns where the worker lives."""
        import ray

        from ..serving.host import make_worker

        try:
            worker = make_worker(self.config, leave_when_stuck=True, server_id=self.server_id)
            try:
                worker.load()
            except BaseException:
                worker.close()
                raise
            self.worker = worker
        finally:
            self._loaded.set()
        return {
            "name": worker.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def run(self) -> dict[str, Any]:
        """Serve until :meth:`stop` or a stop request, then drain; returns the worker's name
        and counts (``stats``: all of them, as its heartbeat publishes them)."""
        self._loaded.wait()
        worker = self.worker
        if worker is None:  # load failed; the caller has the error from load()
            self._finished.set()
            return {}
        try:
            worker.run(self._stop)
        finally:
            worker.close()
            self._finished.set()
        stats = worker.stats
        counts = {"name": worker.name, "succeeded": stats.succeeded, "failed": stats.failed}
        counts["models"] = worker.published_by_model()
        # left in a model call past params.batch_timeout_s: the runner kills this actor
        return {**counts, "stuck": 1} if worker.left_stuck else counts

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop reading; True once what was read is served and acknowledged."""
        self._stop.set()
        if self._loaded.is_set() and self.worker is None:
            return True
        return self._finished.wait(timeout_s)


class RayRunner(Runner):
    """``params.workers`` Ray actors, each a :class:`~zoo_serving.Worker` running the same
    loop as every runner, in one consumer group.

    Ray: ``ray.address`` names an existing cluster (``host:port`` of its head); empty starts a
    local Ray in this process with a small object store (128 MB), as many CPUs as the machine
    has (at least one per worker), and no dashboard. A Ray this process had already joined is
    used as it is. Each actor asks for one CPU; each uses ``params.threads`` framework threads,
    when 0 its node's cores divided between the workers (``max(1, cpu_count // workers)``).
    The model is loaded once per actor. Every node needs zoo_serving and the model's framework
    installed, ``model.path`` readable and ``data.src`` reachable.

    Stopping reaches remote actors twice: the stream's control key (every worker watches it)
    and ``actor.stop``; both drain. An actor that dies (``ray.kill``, a lost node) is not
    replaced; its pending records go to the other workers once idle ``params.claim_idle_ms``.
    An actor whose worker is stuck in a batch past ``params.batch_timeout_s`` is killed and
    replaced by a watcher thread (:attr:`restarts` counts them). Ray is shut down at
    :meth:`stop` only when this runner started it.
    """

    name = "ray"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._ray: Any = None
        self._owns_ray = False
        self.actors: list[Any] = []
        self._loads: dict[Any, int] = {}  # pending load() result -> actor index
        self._runs: dict[Any, int] = {}  # run() result -> actor index
        self._ready: set[int] = set()
        self._ended: set[int] = set()
        self._errors: list[BaseException] = []
        self._stopping = False
        self.workers_info: dict[int, dict[str, Any]] = {}
        self.restarts = 0  # actors replaced after their worker got stuck
        self._lock = threading.RLock()  # the watcher and the caller both collect results
        self._watcher: threading.Thread | None = None
        self._spawn: Any = None  # index -> a new actor, its load() and run() submitted

    # ------------------------------------------------------------------ Runner steps

    def _start(self) -> None:
        ray = self._ray = _import_ray()
        self._stopping = False
        self._ready, self._ended, self._errors, self.workers_info = set(), set(), [], {}
        self.restarts = 0
        self._connect(ray)
        actor_cls = ray.remote(num_cpus=1, max_concurrency=3, max_restarts=0)(WorkerActor)
        raw = shipped_config(self.config, resolve_threads=False)
        level = package_log_level()
        self.actors, self._loads, self._runs = [None] * self.workers, {}, {}

        host = socket.gethostname()

        def spawn(index: int) -> None:
            actor = self.actors[index] = actor_cls.remote(raw, index, level, self.server_id, host)
            self._loads[actor.load.remote()] = index
            self._runs[actor.run.remote()] = index

        self._spawn = spawn
        for i in range(self.workers):
            spawn(i)
        self._watcher = threading.Thread(target=self._watch, name="zoo-serving-ray", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Replace actors left stuck, even when nobody asks whether the runner is alive."""
        while not self._stopping and self._ray is not None:
            try:
                if not self._alive():
                    return
            except Exception as exc:  # Ray going away under a stop
                log.debug("watching ray workers: %s", exc)
            time.sleep(WATCH_S)

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            log.info("using the Ray this process already joined")
            return
        address = self.config.ray.address
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if not address:
            options.update(
                address="local",
                num_cpus=max(os.cpu_count() or 1, self.workers),
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
            )
        else:
            options["address"] = address
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(**options)
        except Exception as exc:
            where = f"the Ray cluster at ray.address={address!r}" if address else "a local Ray"
            raise ServerError(
                f"could not start or join {where}: {type(exc).__name__}: {exc}. Check the "
                "address (host:port of the head's GCS); a cluster with token authentication "
                "also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN) in this process's environment"
            ) from exc
        finally:
            if main and previous is not None:  # ray.init replaces it; serve() drains on it
                signal.signal(signal.SIGTERM, previous)
        self._owns_ray = True
        log.info("joined %s", f"Ray at {address}" if address else "a local Ray")

    def _stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        if not request_stop(self.config.data):
            log.warning("Redis did not answer the stop request; stopping through Ray only")
        for i, actor in enumerate(self.actors):
            if i not in self._ended:
                actor.stop.remote()

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """Ask every actor to drain and stop, wait up to ``timeout_s``, then release them."""
        try:
            super().stop(timeout_s)
        finally:
            self._release()

    def _release(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors = []
        self._loads, self._runs = {}, {}
        if self._owns_ray:
            ray.shutdown()  # a local Ray stops; from a cluster, this process disconnects
            self._owns_ray = False
            log.info("left Ray")

    def join(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                refs = [ref for ref, i in self._runs.items() if i not in self._ended]
            if not refs:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=remaining)
            with self._lock:
                self._collect(done)
            if len(done) < len(refs):
                return False

    def _alive(self) -> bool:
        with self._lock:
            pending = [ref for ref, i in self._runs.items() if i not in self._ended]
            if not pending:
                return False
            done, rest = self._ray.wait(pending, num_returns=len(pending), timeout=0)
            self._collect(done)
            return bool(rest) or any(i not in self._ended for i in self._runs.values())

    def _ready_count(self) -> int:
        with self._lock:
            pending = list(self._loads)
            if pending:
                done, _ = self._ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in done:
                    index = self._loads.pop(ref)
                    try:
                        info = self._ray.get(ref)
                    except Exception as exc:
                        self._errors.append(_original(exc, index))
                        continue
                    self._ready.add(index)
                    self.workers_info[index] = info
                    log.info("ray worker %d ready: %s on %s pid %d", index, *_where(info))
            return len(self._ready - self._ended)

    def raise_if_failed(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _collect(self, done: list[Any]) -> None:
        """Note the actors whose run() ended; an actor that died is logged, one whose worker
        was left stuck in a model call is killed and replaced."""
        for ref in done:
            index = self._runs.get(ref)
            if index is None or index in self._ended:
                continue
            try:
                counts = self._ray.get(ref)
            except Exception as exc:
                self._ended.add(index)
                if index in self._ready and not self._stopping:
                    log.warning(
                        "ray worker %d died (%s); its pending records go to the other workers "
                        "after params.claim_idle_ms=%d",
                        index,
                        type(exc).__name__,
                        self.config.params.claim_idle_ms,
                    )
                continue
            if counts and self.metrics is not None:
                self.metrics.worker_ended(counts["name"], counts["models"])
            if counts and counts.get("stuck") and not self._stopping:
                self._replace(ref, index)
                continue
            self._ended.add(index)
            if counts:
                log.info(
                    "ray worker %d stopped: %d succeeded, %d failed",
                    index,
                    counts["succeeded"],
                    counts["failed"],
                )

    def _replace(self, ref: Any, index: int) -> None:
        log.warning(
            "ray worker %d was stuck in a batch past params.batch_timeout_s=%g; killing its "
            "actor and starting another; its records go to the other workers after "
            "params.claim_idle_ms=%d, one at a time",
            index,
            self.config.params.batch_timeout_s,
            self.config.params.claim_idle_ms,
        )
        with contextlib.suppress(Exception):
            self._ray.kill(self.actors[index])
        del self._runs[ref]
        self._ready.discard(index)
        self.restarts += 1
        self._spawn(index)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "params.runner=ray needs Ray; install it with `pip install zoo-serving[ray]`"
        ) from exc
    return ray


def _original(exc: BaseException, index: int) -> BaseException:
    """The worker's own error out of Ray's wrapper (a RayTaskError carries it as ``cause``)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return ServerError(f"ray worker {index} failed before its model was ready: {exc}")


def _where(info: dict[str, Any]) -> tuple[Any, ...]:
    return info.get("name"), info.get("host"), info.get("pid")
