"""The Python API of the server: :class:`Server` (start/stop/context manager) and :func:`serve`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from .backends.preflight import model_identity
from .broker import presence
from .broker.access import check_access, server_commands
from .broker.connection import connect, redis_url
from .broker.embedded import ManagedRedis, embedded_owner, port_answers
from .config import Config, load_config
from .errors import ServerError
from .observe.metrics import Metrics
from .repository.api import Models
from .repository.control import RepositoryController
from .runners import Runner, create_runner

log = logging.getLogger(__name__)

ABORT_STOP_S = 5.0  # how long a start that failed (or was interrupted) waits for its workers


class Server:
    """A running zoo_serving server: Redis resolved (or embedded), workers started.

    Args:
        config: a path to ``config.yaml``, a mapping, or a :class:`Config`.
        runner: override ``params.runner``.

    Example::

        with Server("config.yaml") as server:      # returns once the model is warmed up
            print(server.url)                       # the Redis clients should use
    """

    def __init__(self, config: Any, *, runner: str | None = None) -> None:
        cfg = load_config(config)
        if runner:
            cfg = cfg.replace(**{"params.runner": runner})
        self.config: Config = cfg
        self.embedded: ManagedRedis | None = None
        self.runner: Runner | None = None
        self.http: Any = None  # the HTTP front door (zoo_serving.http.HttpServer), if http.port
        self.metrics: Metrics | None = None  # kept after stop, for its summary_dir
        #: this server on its stream's claim (``zs:{stream}:servers``)
        self.server_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        #: the claims of other live servers with the same model this one joined at start
        self.peers: list[dict[str, Any]] = []
        self._claim: _Claim | None = None
        self.repository: RepositoryController | None = None  # the models' index and wants
        self._log_handler: logging.Handler | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """The Redis URL the workers use."""
        return redis_url(self.config.data)

    @property
    def models(self) -> Models:
        """Load, unload and list this server's models (see :class:`~.repository.api.Models`).

        Raises:
            ServerError: the server is not started.
        """
        if self.repository is None:
            raise ServerError("the server is not started: start it before managing its models")
        return Models(self.repository.control.redis, self.config.data.stream)

    @property
    def urls(self) -> dict[str, str]:
        """Where this server answers: ``redis``, and ``metrics`` and ``http`` when on."""
        urls = {"redis": self.url}
        if self.metrics is not None and self.metrics.metrics_url:
            urls["metrics"] = self.metrics.metrics_url
        if self.http is not None:
            urls["http"] = self.http.url
        return urls

    def start(self, *, wait_ready: bool = True, timeout_s: float | None = 300.0) -> Server:
        """Resolve Redis, claim the stream, start the workers and (by default) wait until they
        are ready.

        Raises:
            ServerError: the workers did not get ready (the cause is chained), or the stream
                is served by another server with another model.
            BrokerConnectionError: ``data.src`` is set and does not answer.
        """
        if self.runner is not None:  # already started, e.g. `with Server(cfg).start():`
            return self
        self._stopped.clear()
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._setup_error_log()
        try:
            self._resolve_redis()
            self._claim_stream()
            self.repository = RepositoryController(self.config, connect(self.config.data))
            self.repository.start()
            if self.config.http.port:  # up first: /v2/health/ready tells when workers are
                from .http import serve_http

                self.http = serve_http(self.config)
            self.metrics = Metrics(self.config, server_id=self.server_id).start()
            self.runner = create_runner(self.config)
            self.runner.metrics = self.metrics
            self.runner.server_id = self.server_id
            log.info(
                "starting %d %s worker(s) on %s stream %s",
                self.runner.workers,
                self.runner.name,
                self.url,
                self.config.data.stream,
            )
            self.runner.start()
            if wait_ready and not self.runner.wait_ready(timeout_s):
                self.runner.raise_if_failed()
                raise ServerError(f"workers not ready within {timeout_s}s")
        except BaseException:
            self.stop(ABORT_STOP_S)  # workers still loading have nothing to drain
            raise
        if wait_ready:
            log.info("server ready")
        return self

    def _resolve_redis(self) -> None:
        data = self.config.data
        if data.src:
            connect(data).close()  # a set src that does not answer is an error
            return
        port = data.embedded_port
        managed = ManagedRedis(self.config.work_dir / "redis", port, persistent=True)
        managed.take_over_leftover()  # one a killed server of this work dir left running
        if port_answers("localhost", port):
            owner = embedded_owner(port)
            if owner is not None:
                raise ServerError(
                    f"localhost:{port} is the embedded redis-server of another zoo_serving "
                    f"server (pid {owner.get('server_pid')}, files in {owner.get('dir')}); "
                    "it stops when that server stops. Set data.src: "
                    f"localhost:{port} to share it on purpose, or data.embedded_port to "
                    "run one of this server's own",
                    port=port,
                )
            connect(data).close()
            log.info("using the Redis already answering on localhost:%d", port)
            return
        self.embedded = managed.start()
        self.config = self.config.replace(**{"data.src": self.embedded.url})

    def _claim_stream(self) -> None:
        """Say which model this server serves on its stream; refuse when a live server serves
        another model there, join (and say so) when it serves the same one."""
        cfg = self.config
        if not cfg.model.path:
            return
        client = connect(cfg.data)
        try:  # a user who may not touch the claim gets the ACL rule, not a raw NOPERM
            check_access(client, server_commands(cfg.data.stream))
        finally:
            client.close()
        identity = model_identity(cfg.model.path, cfg.model.backend)
        body = {
            "model": f"{identity['backend']}:{identity['sha256']}",
            "backend": identity["backend"],
            "path": identity["path"],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "work_dir": str(cfg.work_dir.resolve()),
            "started": time.time(),
        }
        claim = self._claim = _Claim(cfg, self.server_id, body)  # released by stop(), even
        claimed, others = claim.acquire()  # when a signal lands in the middle of acquiring
        if not claimed:
            self._claim = None
            other = next(o for o in others if o.get("model") != body["model"])
            raise ServerError(
                f"stream {cfg.data.stream} on {self.url} is served by another server with "
                f"another model: {other.get('backend')} model {other.get('path')} (pid "
                f"{other.get('pid')} on {other.get('host')}, work dir {other.get('work_dir')}); "
                f"this one serves {body['backend']} model {body['path']}. Set another "
                "data.stream, or stop that server first",
                stream=cfg.data.stream,
            )
        self.peers = others
        if others:
            log.warning(
                "joining %d server(s) already serving stream %s with the same model: %s",
                len(others),
                cfg.data.stream,
                "; ".join(
                    f"pid {o.get('pid')} on {o.get('host')} ({o.get('work_dir')})" for o in others
                ),
            )

    def _setup_error_log(self) -> None:
        if not self.config.log.error or self._log_handler is not None:
            return
        handler = logging.FileHandler(self.config.work_dir / "error.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        pkg = logging.getLogger("zoo_serving")
        if pkg.level == logging.NOTSET or pkg.level > logging.INFO:
            pkg.setLevel(logging.INFO)
        pkg.addHandler(handler)
        self._log_handler = handler

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the workers end (after :meth:`stop` or a stop request); True if they did."""
        if self.runner is None:
            return True
        return self.runner.join(timeout_s)

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """Stop reading, finish in-flight records, stop the workers and the embedded Redis.

        The claim on the stream and the embedded Redis are released even when the drain is
        cut short (a second signal)."""
        try:
            if self.http is not None:  # first, so no request waits on workers that are gone
                self.http.stop()
                self.http = None
            if self.runner is not None:
                self.runner.stop(timeout_s)
                self.runner = None
            if self.metrics is not None:
                self.metrics.close()
        finally:
            if self.repository is not None:
                self.repository.stop()
                self.repository.control.redis.close()
                self.repository = None
            if self._claim is not None:
                self._claim.release()
                self._claim = None
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None
                self.config = self.config.replace(**{"data.src": None})
            if self._log_handler is not None:
                log.info("server stopped")
                logging.getLogger("zoo_serving").removeHandler(self._log_handler)
                self._log_handler.close()
                self._log_handler = None
            self._stopped.set()

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.alive

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_stop(config: Config) -> bool:
    """Write a stop request to the stream's control key (reaches remote workers too).

    Returns False when Redis does not answer.
    """
    return presence.request_stop(config.data)


def serve(
    config: Any,
    *,
    runner: str | None = None,
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or a stop request, then drain and return.

    A signal while the model is still loading stops the start (``SystemExit``, 128 + the
    signal); a second signal while draining stops at once.

    Args:
        config: a path to ``config.yaml``, a mapping, or a :class:`Config`.
        runner: override ``params.runner``.
        on_ready: called with the :class:`Server` once its workers are ready.

    Example::

        import zoo_serving
        zoo_serving.serve("config.yaml")
    """
    server = Server(config, runner=runner)
    started = threading.Event()
    stopping = threading.Event()
    installed: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not started.is_set():
            log.warning("signal %d while starting: stopping the start", signum)
            raise SystemExit(128 + signum)
        if stopping.is_set():
            log.warning("second signal %d: stopping now", signum)
            raise SystemExit(128 + signum)
        log.info("signal %d: draining in-flight records, then stopping", signum)
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            installed[sig] = signal.signal(sig, on_signal)
    try:
        server.start()
        started.set()
        if on_ready is not None:
            on_ready(server)
        while not stopping.is_set() and server.running:
            stopping.wait(0.2)
    finally:
        server.stop()
        for sig, previous in installed.items():
            signal.signal(sig, previous)


class _Claim:
    """A server's claim on its stream, renewed every heartbeat by a thread until released."""

    def __init__(self, config: Config, server_id: str, body: dict[str, Any]) -> None:
        self.server_id = server_id
        self.body = body
        self._client = connect(config.data)
        self._presence = presence.Presence(self._client, config.data.stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> tuple[bool, list[dict[str, Any]]]:
        claimed, others = self._presence.claim(self.server_id, self.body)
        if not claimed:
            self._client.close()
            return claimed, others
        self._thread = threading.Thread(target=self._renew, name="zoo-claim", daemon=True)
        self._thread.start()
        return claimed, others

    def _renew(self) -> None:
        while not self._stop.wait(presence.HEARTBEAT_S):
            try:
                if not self._presence.claim(self.server_id, self.body)[0]:
                    log.error("stream claim lost to a server with another model")
            except Exception as exc:  # Redis away for a moment: renewed with the next beat
                log.debug("renewing the stream claim failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        try:
            self._presence.unclaim(self.server_id)
        except Exception as exc:
            log.debug("could not release the stream claim: %s", exc)
        self._client.close()
