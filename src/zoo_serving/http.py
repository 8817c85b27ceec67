"""The HTTP front door: Cluster Serving's ``POST /predict`` and the KServe v2 / Open Inference
Protocol REST endpoints, feeding the same Redis stream as queue clients (see ``docs/http.md``).

Every HTTP request becomes native records on ``data.stream``, so HTTP requests and queue records
are batched together by the same workers. The front door loads no model: it is a queue client
that answers from the results, and learns the model's inputs and outputs from what the workers
publish when they load it.

Example::

    from zoo_serving.http import serve_http

    with serve_http("config.yaml", port=8080) as front:     # uvicorn in a thread
        print(front.url)                                    # http://127.0.0.1:8080

FastAPI and uvicorn are imported when an app is built (``pip install 'zoo-serving[http]'``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import http_json, keys
from .config import Config, load_config
from .errors import (
    BrokerConnectionError,
    DeadlineExceededError,
    InputError,
    MissingDependencyError,
    PayloadTooLargeError,
    QueueFullError,
    ResultTimeoutError,
    ServerError,
    ZooServingError,
)
from .http_json import HttpError

__all__ = ["HttpServer", "create_app", "serve_http"]

log = logging.getLogger(__name__)

READY_CACHE_S = 0.5  # a positive readiness answer is reused this long
MODEL_CACHE_S = 2.0  # the published model description is reused this long


def _imports() -> Any:
    try:
        import fastapi
        import uvicorn  # noqa: F401 - checked here so a missing one is named early
    except ImportError:
        raise MissingDependencyError(
            "the HTTP front door needs FastAPI and uvicorn: pip install 'zoo-serving[http]'"
        ) from None
    return fastapi


def model_name(config: Config) -> str:
    """The model's name in ``/v2/models/<name>``: ``http.model_name``, else the name of the
    model file (without suffix) or directory."""
    if config.http.model_name:
        return config.http.model_name
    path = Path(config.model.path or "model")
    return path.stem if path.suffix else path.name


def _status(exc: BaseException) -> int:
    """The HTTP status of an error a record or the queue gave."""
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, (QueueFullError, BrokerConnectionError)):
        return 503
    if isinstance(exc, (ResultTimeoutError, DeadlineExceededError)):
        return 504
    return 500


class _Queue:
    """The front door's side of Redis: readiness, the model's description, records in and
    results out."""

    def __init__(self, config: Config) -> None:
        from .client import InputQueue, OutputQueue

        self.config = config
        self.stream = config.data.stream
        self.timeout_s = config.http.timeout_s
        self.inq = InputQueue(config=config)
        self.outq = OutputQueue(config=config)
        self._ready_until = 0.0
        self._model: tuple[float, dict[str, Any] | None] = (0.0, None)

    def close(self) -> None:
        self.inq.close()
        self.outq.close()

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._ready_until:
            return True
        ok = bool(self.inq.db.exists(keys.ready(self.stream)))
        if ok:
            self._ready_until = now + READY_CACHE_S
        return ok

    def model(self) -> dict[str, Any] | None:
        """What the workers published about the model (backend, inputs, outputs), if any."""
        now = time.monotonic()
        stamp, info = self._model
        if info is None or now - stamp > MODEL_CACHE_S:
            blob = self.inq.db.get(keys.model(self.stream))
            info = json.loads(blob) if blob else None
            self._model = (now, info)
        return info

    def require_ready(self) -> dict[str, Any]:
        if not self.ready():
            raise HttpError(
                503,
                f"model not ready: no worker of stream {self.stream} has its model loaded; "
                "retry when /v2/health/ready answers 200",
                "not_ready",
            )
        return self.model() or {"inputs": [], "outputs": []}

    def run(self, records: list[http_json.Record]) -> list[Any]:
        """Send records, wait for every result (``http.timeout_s`` in total); a failed record
        raises an :class:`HttpError` naming it."""
        uris = [f"http-{uuid.uuid4().hex}" for _ in records]
        self.inq.enqueue_many(zip(uris, records), deadline_s=self.timeout_s)
        if len(uris) == 1:  # one BLPOP, no first look: most requests are one record
            try:
                one = self.outq.query(uris[0], timeout=self.timeout_s)
            except ZooServingError as exc:
                one = exc
            results = {} if one is None else {uris[0]: one}
        else:
            results = self.outq.query_many(uris, self.timeout_s)
        missing = len(uris) - len(results)
        if missing:
            raise HttpError(
                504,
                f"{missing} of {len(uris)} results missing after http.timeout_s="
                f"{self.timeout_s}s; the workers may be overloaded",
                ResultTimeoutError.code,
            )
        out = []
        for i, uri in enumerate(uris):
            result = results[uri]
            if isinstance(result, ZooServingError):
                where = f"record {i}: " if len(uris) > 1 else ""
                raise HttpError(_status(result), where + result.message, result.code)
            out.append(result)
        return out


def _reply(content: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(http_json.dumps(content), status, media_type="application/json")


def _failure(exc: BaseException) -> Any:
    """The JSON error response for ``exc``: ``{"error": message, "code": code}``."""
    if isinstance(exc, HttpError):
        return _reply({"error": exc.message, "code": exc.code}, exc.status)
    if isinstance(exc, ZooServingError):
        return _reply({"error": exc.message or str(exc), "code": exc.code}, _status(exc))
    import redis

    if isinstance(exc, redis.exceptions.RedisError):
        return _reply({"error": f"Redis is unavailable: {exc}", "code": "queue"}, 503)
    log.exception("HTTP request failed")
    return _reply({"error": f"{type(exc).__name__}: {exc}", "code": "server"}, 500)


class _Routes:
    """What each route does; blocking work runs in the server's thread pool."""

    def __init__(self, config: Config) -> None:
        self.queue = _Queue(config)
        self.name = model_name(config)
        self.body_limit = max(4 * config.data.max_payload_bytes, 1 << 20)  # JSON: ~4x bytes

    async def call(self, fn: Any, *args: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        try:
            return _reply(await run_in_threadpool(fn, *args))
        except Exception as exc:
            return _failure(exc)

    async def post(self, fn: Any, request: Any, requested: str | None = None) -> Any:
        """Check the model name and read the JSON body, then run ``fn(body)``."""
        try:
            if requested is not None:
                self.check_name(requested)
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > self.body_limit:
                raise HttpError(413, f"body of {length} bytes is over the limit {self.body_limit}")
            body = http_json.parse_body(await request.body())
        except HttpError as exc:
            return _failure(exc)
        return await self.call(fn, body)

    def check_name(self, requested: str) -> None:
        if requested != self.name:
            raise HttpError(
                404, f"no model {requested!r}; this server serves {self.name!r}", "no_model"
            )

    def predict(self, body: Any) -> Any:
        info = self.queue.model() or {"inputs": []}
        dtypes = [np.dtype(s["dtype"]) for s in info["inputs"]]
        records = http_json.parse_instances(body, dtypes)
        self.queue.require_ready()
        return http_json.predictions(self.queue.run(records))

    def infer(self, body: Any) -> Any:
        tensors, wanted = http_json.parse_v2_inputs(body)
        info = self.queue.require_ready()
        ranks = {s["name"]: len(s["shape"]) - 1 for s in info["inputs"]}
        records, batched = http_json.split_batch(tensors, ranks)
        results = self.queue.run(records)
        outputs = [s["name"] for s in info["outputs"]]
        content: dict[str, Any] = {"model_name": self.name}
        if isinstance(body.get("id"), str):
            content["id"] = body["id"]
        content["outputs"] = http_json.v2_outputs(results, outputs, batched, wanted)
        return content

    def metadata(self, requested: str) -> Any:
        self.check_name(requested)
        info = self.queue.model()
        if info is None:
            raise HttpError(503, f"model {self.name!r} not loaded yet: no worker published it")
        return {
            "name": self.name,
            "versions": [],
            "platform": info.get("backend", ""),
            "inputs": [http_json.v2_tensor_spec(s) for s in info["inputs"]],
            "outputs": [http_json.v2_tensor_spec(s) for s in info["outputs"]],
        }

    async def ready(self, requested: str | None = None) -> Any:
        """200 ``{"ready": true}`` while a worker is ready, else 503 ``{"ready": false}``."""
        from starlette.concurrency import run_in_threadpool

        try:
            if requested is not None:
                self.check_name(requested)
            ok = await run_in_threadpool(self.queue.ready)
        except Exception as exc:
            return _failure(exc)
        named = {"name": self.name} if requested is not None else {}
        return _reply({**named, "ready": ok}, 200 if ok else 503)


def create_app(config: Any) -> Any:
    """The FastAPI app of the front door for ``config`` (a path, mapping or Config).

    Routes: ``POST /predict``; ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
    ``/v2/models/<name>``, ``/v2/models/<name>/ready``; ``POST /v2/models/<name>/infer``.

    Raises:
        MissingDependencyError: FastAPI or uvicorn is not installed.
        BrokerConnectionError: Redis does not answer.
    """
    fastapi = _imports()

    from . import __version__

    routes = _Routes(load_config(config))
    app = fastapi.FastAPI(title="zoo_serving", version=__version__, docs_url=None, redoc_url=None)
    app.state.queue = routes.queue

    # Starlette-style routes (the request in, a response out): the JSON is parsed here, so a
    # malformed body is our 400 with a message, not a framework's 422
    async def predict(request: Any) -> Any:
        return await routes.post(routes.predict, request)

    async def infer(request: Any) -> Any:
        return await routes.post(routes.infer, request, request.path_params["name"])

    async def metadata(request: Any) -> Any:
        return await routes.call(routes.metadata, request.path_params["name"])

    async def model_ready(request: Any) -> Any:
        return await routes.ready(request.path_params["name"])

    async def ready(request: Any) -> Any:
        return await routes.ready()

    async def live(request: Any) -> Any:
        return _reply({"live": True})

    async def server(request: Any) -> Any:
        return _reply({"name": "zoo_serving", "version": __version__, "extensions": []})

    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/v2/models/{name}/infer", infer, methods=["POST"])
    app.add_route("/v2/models/{name}", metadata, methods=["GET"])
    app.add_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    app.add_route("/v2/health/ready", ready, methods=["GET"])
    app.add_route("/v2/health/live", live, methods=["GET"])
    app.add_route("/v2", server, methods=["GET"])
    return app


class HttpServer:
    """The front door served by uvicorn in a background thread.

    Args:
        config: a path, mapping or Config.
        host: overrides ``http.host`` (default 127.0.0.1).
        port: overrides ``http.port``; 0 picks a free port (see :attr:`port`).
    """

    def __init__(self, config: Any, *, host: str | None = None, port: int | None = None) -> None:
        self.config = load_config(config)
        self.host = host or self.config.http.host
        self._port = self.config.http.port if port is None else port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._queue: _Queue | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (the free one picked when 0 was asked)."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> HttpServer:
        """Bind and serve; returns once uvicorn accepts connections.

        Raises:
            ServerError: the port is taken, or uvicorn did not start.
        """
        import uvicorn

        self._socket = self._bind()
        app = create_app(self.config)
        self._queue = app.state.queue
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self._port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # the library configures no logging
            access_log=False,
            timeout_graceful_shutdown=int(self.config.http.timeout_s) + 1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="zoo-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(timeout_s=5.0)
                raise ServerError(
                    f"the HTTP front door did not start on {self.host}:{self._port}; see the log"
                )
            time.sleep(0.01)
        log.info("HTTP front door on %s, model %r", self.url, model_name(self.config))
        return self

    def _bind(self) -> socket.socket:
        """The listening socket, bound here so a taken port is a clear error, not an exit."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every response waits out Nagle against delayed ACKs (tens of ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            raise ServerError(
                f"the HTTP front door cannot listen on {self.host}:{self._port}: "
                f"{exc.strerror}; set http.port (or --http) to a free port"
            ) from None
        return sock

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except SystemExit as exc:  # uvicorn exits when its startup fails; it logged why
            log.error("HTTP front door stopped at startup (exit %s)", exc.code)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to ``http.timeout_s``, or
        ``timeout_s``), close the Redis clients."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.config.http.timeout_s + 2 if timeout_s is None else timeout_s)
            self._thread = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None

    def __enter__(self) -> HttpServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_http(config: Any, host: str | None = None, port: int | None = None) -> HttpServer:
    """Start the front door for ``config`` in a background thread; stop it with ``.stop()``.

    ``host`` and ``port`` override ``http.host`` (default 127.0.0.1) and ``http.port``.
    """
    return HttpServer(config, host=host, port=port).start()
