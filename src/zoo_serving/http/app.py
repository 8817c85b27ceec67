"""The front door's app: its routes, how each request becomes records on the stream and how
results and errors become responses (FastAPI, imported when an app is built)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..broker.presence import Presence
from ..config import Config, load_config
from ..errors import (
    BrokerConnectionError,
    DeadlineExceededError,
    InputError,
    MissingDependencyError,
    PayloadTooLargeError,
    QueueFullError,
    ResultTimeoutError,
    ZooServingError,
)
from . import bodies, limits
from .bodies import HttpError

log = logging.getLogger(__name__)

READY_CACHE_S = 0.5  # a positive readiness answer is reused this long
MODEL_CACHE_S = 2.0  # the published model description is reused this long
MODEL_VERSION = "1"  # one model, one version: what /v2/models/<name>/versions/<v> accepts


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


class DoorQueue:
    """The front door's side of Redis: readiness, the model's description, records in and
    results out."""

    def __init__(self, config: Config) -> None:
        from ..client import InputQueue

        self.config = config
        self.stream = config.data.stream
        self.timeout_s = config.http.timeout_s
        self.inq = InputQueue(config=config)
        self.presence = Presence(self.inq.db, self.stream)
        self._ready_until = 0.0
        self._model: tuple[float, dict[str, Any] | None] = (0.0, None)

    def close(self) -> None:
        self.inq.close()

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._ready_until:
            return True
        ok = self.presence.is_ready()
        if ok:
            self._ready_until = now + READY_CACHE_S
        return ok

    def model(self) -> dict[str, Any] | None:
        """What the workers published about the model (backend, inputs, outputs), if any."""
        now = time.monotonic()
        stamp, info = self._model
        if info is None or now - stamp > MODEL_CACHE_S:
            info = self.presence.model()
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

    def run(self, records: list[bodies.Record]) -> list[Any]:
        """Send records, wait for every result (``http.timeout_s`` in total); a failed record
        raises an :class:`HttpError` naming it. Results come back to keys only this call
        knows, so no ``OutputQueue.dequeue`` elsewhere can take them."""
        try:
            results = self.inq.predict_many(records, self.timeout_s, return_exceptions=True)
        except ResultTimeoutError as exc:
            raise HttpError(
                504,
                f"{exc.details.get('missing', len(records))} of {len(records)} results missing "
                f"after http.timeout_s={self.timeout_s}s; the workers may be overloaded",
                ResultTimeoutError.code,
            ) from None
        for i, result in enumerate(results):
            if isinstance(result, ZooServingError):
                where = f"record {i}: " if len(records) > 1 else ""
                raise HttpError(_status(result), where + result.message, result.code)
        return results


def _reply(content: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(bodies.dumps(content), status, media_type="application/json")


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
    """What each route does; blocking work (JSON parsing, Redis) runs in the server's thread
    pool."""

    def __init__(self, config: Config) -> None:
        self.queue = DoorQueue(config)
        self.name = model_name(config)
        self.max_payload_bytes = config.data.max_payload_bytes
        self.body_limit = max(4 * self.max_payload_bytes, 1 << 20)  # JSON: ~4x bytes

    async def call(self, fn: Any, *args: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        try:
            return _reply(await run_in_threadpool(fn, *args))
        except Exception as exc:
            return _failure(exc)

    async def post(self, fn: Any, request: Any, *named: str) -> Any:
        """Check the model name (and version), read the body up to its limit, then parse it
        and run ``fn(body, version)`` in the thread pool."""
        try:
            if named:
                self.check_name(*named)
            raw = await limits.read_body(request, self.body_limit)
        except HttpError as exc:
            return _failure(exc)
        version = named[1] if len(named) > 1 else None
        return await self.call(lambda: fn(limits.parse_json(raw), version))

    def check_name(self, requested: str, version: str | None = None) -> None:
        if requested != self.name:
            raise HttpError(
                404, f"no model {requested!r}; this server serves {self.name!r}", "no_model"
            )
        if version is not None and version != MODEL_VERSION:
            raise HttpError(
                404,
                f"no version {version!r} of model {self.name!r}; it serves version "
                f"{MODEL_VERSION!r}",
                "no_version",
            )

    def predict(self, body: Any, version: str | None = None) -> Any:
        info = self.queue.model() or {"inputs": []}
        dtypes = [np.dtype(s["dtype"]) for s in info["inputs"]]
        records = bodies.parse_instances(body, dtypes)
        limits.check_payloads(records, self.max_payload_bytes)
        self.queue.require_ready()
        return bodies.predictions(self.queue.run(records))

    def infer(self, body: Any, version: str | None = None) -> Any:
        tensors, wanted = bodies.parse_v2_inputs(body)
        info = self.queue.require_ready()
        offered = [s["name"] for s in bodies.v2_output_specs(info)]
        unknown = [name for name in wanted or () if name not in offered]
        if unknown:
            raise bodies.bad(
                f"outputs {unknown} are not among the outputs of model {self.name!r}: {offered} "
                f"(as GET /v2/models/{self.name} lists them)"
            )
        ranks = {s["name"]: len(s["shape"]) - 1 for s in info["inputs"]}
        records, batched = bodies.split_batch(tensors, ranks)
        limits.check_payloads(records, self.max_payload_bytes)
        results = self.queue.run(records)
        outputs = [s["name"] for s in info["outputs"]]
        content: dict[str, Any] = {"model_name": self.name}
        if version is not None:
            content["model_version"] = version
        if isinstance(body.get("id"), str):
            content["id"] = body["id"]
        content["outputs"] = bodies.v2_outputs(results, outputs, batched, wanted)
        return content

    def metadata(self, requested: str, version: str | None = None) -> Any:
        self.check_name(requested, version)
        info = self.queue.model()
        if info is None:
            raise HttpError(503, f"model {self.name!r} not loaded yet: no worker published it")
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": info.get("backend", ""),
            "inputs": [bodies.v2_tensor_spec(s) for s in info["inputs"]],
            "outputs": bodies.v2_output_specs(info),
        }

    async def ready(self, *named: str) -> Any:
        """200 ``{"ready": true}`` while a worker is ready, else 503 ``{"ready": false}``."""
        from starlette.concurrency import run_in_threadpool

        try:
            if named:
                self.check_name(*named)
            ok = await run_in_threadpool(self.queue.ready)
        except Exception as exc:
            return _failure(exc)
        which = {"name": self.name} if named else {}
        return _reply({**which, "ready": ok}, 200 if ok else 503)


def create_app(config: Any) -> Any:
    """The FastAPI app of the front door for ``config`` (a path, mapping or Config).

    Routes: see :data:`ROUTES`. Any other path or method is a 404 or 405 with the JSON error
    body every route answers with, ``{"error": ..., "code": ...}``.

    Raises:
        MissingDependencyError: FastAPI or uvicorn is not installed.
        BrokerConnectionError: Redis does not answer.
    """
    fastapi = _imports()
    from starlette.exceptions import HTTPException

    routes = _Routes(load_config(config))
    app = fastapi.FastAPI(title="zoo_serving", version=__version__, docs_url=None, redoc_url=None)
    app.state.queue = routes.queue

    # Starlette-style routes (the request in, a response out): the JSON is parsed here, so a
    # malformed body is our 400 with a message, not a framework's 422
    def names(request: Any) -> tuple[str, ...]:
        params = request.path_params
        return tuple(params[k] for k in ("name", "version") if k in params)

    async def predict(request: Any) -> Any:
        return await routes.post(routes.predict, request)

    async def infer(request: Any) -> Any:
        return await routes.post(routes.infer, request, *names(request))

    async def metadata(request: Any) -> Any:
        return await routes.call(routes.metadata, *names(request))

    async def model_ready(request: Any) -> Any:
        return await routes.ready(*names(request))

    async def ready(request: Any) -> Any:
        return await routes.ready()

    async def live(request: Any) -> Any:
        return _reply({"live": True})

    async def server(request: Any) -> Any:
        return _reply({"name": "zoo_serving", "version": __version__, "extensions": []})

    handlers = {
        "predict": predict,
        "infer": infer,
        "metadata": metadata,
        "model_ready": model_ready,
        "ready": ready,
        "live": live,
        "server": server,
    }
    for method, path, handler in ROUTES:
        app.add_route(path, handlers[handler], methods=[method])

    async def no_route(request: Any, exc: Any) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        where = f"{request.method} {request.url.path}"
        message = {
            404: f"no route {where}; the routes are " + ", ".join(f"{m} {p}" for m, p, _ in ROUTES),
            405: f"{where}: the method is not allowed; allowed: {(exc.headers or {}).get('Allow')}",
        }.get(exc.status_code, f"{where}: {exc.detail}")
        response = _reply({"error": message, "code": code}, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    async def crashed(request: Any, exc: Exception) -> Any:
        return _failure(exc)  # logged there; still JSON, like every other answer

    app.add_exception_handler(HTTPException, no_route)
    app.add_exception_handler(Exception, crashed)
    return app


# method, path, handler: every route of the front door
ROUTES = [
    ("POST", "/predict", "predict"),
    ("POST", "/v2/models/{name}/infer", "infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "infer"),
    ("GET", "/v2/models/{name}", "metadata"),
    ("GET", "/v2/models/{name}/versions/{version}", "metadata"),
    ("GET", "/v2/models/{name}/ready", "model_ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready", "model_ready"),
    ("GET", "/v2/health/ready", "ready"),
    ("GET", "/v2/health/live", "live"),
    ("GET", "/v2", "server"),
]
