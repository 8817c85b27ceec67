"""The front door's app: its routes, how each request becomes records on the stream and how
results and errors become responses (FastAPI, imported when an app is built)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..config import Config, load_config
from ..errors import (
    MissingDependencyError,
    ZooServingError,
)
from ..repository.api import Models
from . import bodies, limits
from .bodies import HttpError
from .door import DoorQueue, status_of
from .repository import RepositoryRoutes

log = logging.getLogger(__name__)

MODEL_CACHE_INDEX_S = 1.0  # the model index is reused this long


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


def _reply(content: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(bodies.dumps(content), status, media_type="application/json")


def _failure(exc: BaseException) -> Any:
    """The JSON error response for ``exc``: ``{"error": message, "code": code}``."""
    if isinstance(exc, HttpError):
        return _reply({"error": exc.message, "code": exc.code}, exc.status)
    if isinstance(exc, ZooServingError):
        return _reply({"error": exc.message or str(exc), "code": exc.code}, status_of(exc))
    import redis

    if isinstance(exc, redis.exceptions.RedisError):
        return _reply({"error": f"Redis is unavailable: {exc}", "code": "queue"}, 503)
    log.exception("HTTP request failed")
    return _reply({"error": f"{type(exc).__name__}: {exc}", "code": "server"}, 500)


class _Routes:
    """What each route does; blocking work (JSON parsing, Redis) runs in the server's thread
    pool."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.queue = DoorQueue(config)  # the default model's
        self.name = model_name(config)
        self.max_payload_bytes = config.data.max_payload_bytes
        self.body_limit = max(4 * self.max_payload_bytes, 1 << 20)  # JSON: ~4x bytes
        self.models = Models(self.queue.inq.db, config.data.stream)
        self._doors: dict[tuple[str, int | None], DoorQueue] = {}
        self._index: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})

    def close(self) -> None:
        for door in self._doors.values():
            door.close()
        self.queue.close()

    def index(self) -> dict[str, dict[str, Any]]:
        """The server's model index (reused for a second)."""
        stamp, index = self._index
        if time.monotonic() - stamp > MODEL_CACHE_INDEX_S:
            index = self.models.control.index()
            self._index = (time.monotonic(), index)
        return index

    def door(self, name: str | None = None, version: str | None = None) -> DoorQueue:
        """The queue of model ``name`` (default: the default model), version ``version``.

        Raises:
            HttpError: 404 for a model or version the server does not have.
        """
        index = self.index()
        if name is None:
            name = next((n for n, e in index.items() if e.get("default")), self.name)
        entry = index.get(name)
        if entry is None and not (name == self.name and not index):
            have = ", ".join(sorted(index)) or self.name
            raise HttpError(404, f"no model {name!r}; this server serves {have}", "no_model")
        number = None
        if version is not None:
            versions = sorted(entry.get("versions", {})) if entry else ["1"]
            if version not in versions:
                raise HttpError(
                    404,
                    f"no version {version!r} of model {name!r}; it has version(s) "
                    f"{', '.join(versions)}",
                    "no_version",
                )
            number = int(version)
        if entry is None or (entry.get("default") and number is None):
            return self.queue
        key = (name, number)
        if key not in self._doors:
            self._doors[key] = DoorQueue(self.config, name, number)
        return self._doors[key]

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
        return await self.call(lambda: fn(limits.parse_json(raw), *named))

    async def post_optional(self, fn: Any, request: Any) -> Any:
        """Read a body that may be empty (``{}`` then), and run ``fn(body)``."""
        try:
            raw = await limits.read_body(request, self.body_limit)
        except HttpError as exc:
            return _failure(exc)
        return await self.call(lambda: fn(limits.parse_json(raw) if raw.strip() else {}))

    def check_name(self, requested: str, version: str | None = None) -> None:
        self.door(requested, version)

    def predict(self, body: Any, *named: str) -> Any:
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and not isinstance(model, str):
            raise bodies.bad(f"'model' names a model of the repository, got {model!r}")
        door = self.door(model)
        info = door.model() or {"inputs": []}
        dtypes = [np.dtype(s["dtype"]) for s in info["inputs"]]
        records = bodies.parse_instances(body, dtypes)
        limits.check_payloads(records, self.max_payload_bytes)
        door.require_ready()
        return bodies.predictions(door.run(records))

    def infer(self, body: Any, name: str, version: str | None = None) -> Any:
        door = self.door(name, version)
        tensors, wanted = bodies.parse_v2_inputs(body)
        info = door.require_ready()
        offered = [s["name"] for s in bodies.v2_output_specs(info)]
        unknown = [name for name in wanted or () if name not in offered]
        if unknown:
            raise bodies.bad(
                f"outputs {unknown} are not among the outputs of model {name!r}: {offered} "
                f"(as GET /v2/models/{name} lists them)"
            )
        ranks = {s["name"]: len(s["shape"]) - 1 for s in info["inputs"]}
        records, batched = bodies.split_batch(tensors, ranks)
        limits.check_payloads(records, self.max_payload_bytes)
        results = door.run(records)
        outputs = [s["name"] for s in info["outputs"]]
        content: dict[str, Any] = {"model_name": name}
        if version is not None:
            content["model_version"] = version
        if isinstance(body.get("id"), str):
            content["id"] = body["id"]
        content["outputs"] = bodies.v2_outputs(results, outputs, batched, wanted)
        return content

    def metadata(self, requested: str, version: str | None = None) -> Any:
        door = self.door(requested, version)
        info = door.model()
        if info is None:
            raise HttpError(503, f"model {requested!r} not loaded yet: no worker published it")
        entry = self.index().get(requested, {})
        return {
            "name": requested,
            "versions": sorted(entry.get("versions", {})) or ["1"],
            "platform": info.get("backend", ""),
            "inputs": [bodies.v2_tensor_spec(s) for s in info["inputs"]],
            "outputs": bodies.v2_output_specs(info),
        }

    async def ready(self, *named: str) -> Any:
        """200 ``{"ready": true}`` while a worker is ready, else 503 ``{"ready": false}``."""
        from starlette.concurrency import run_in_threadpool

        try:
            door = await run_in_threadpool(self.door, *named) if named else self.queue
            ok = await run_in_threadpool(door.ready)
        except Exception as exc:
            return _failure(exc)
        which = {"name": named[0]} if named else {}
        return _reply({**which, "ready": ok}, 200 if ok else 503)


def _handlers(routes: _Routes) -> dict[str, Any]:
    """The handler of each route name in :data:`ROUTES`."""

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
        extensions = ["model_repository"]
        return _reply({"name": "zoo_serving", "version": __version__, "extensions": extensions})

    repository = RepositoryRoutes(routes.models, routes.config.http.timeout_s)

    async def repo_index(request: Any) -> Any:
        return await routes.post_optional(repository.index, request)

    async def repo_load(request: Any) -> Any:
        name = request.path_params["name"]
        return await routes.post_optional(lambda b: repository.load(b, name), request)

    async def repo_unload(request: Any) -> Any:
        name = request.path_params["name"]
        return await routes.post_optional(lambda b: repository.unload(b, name), request)

    handlers = {
        "predict": predict,
        "infer": infer,
        "metadata": metadata,
        "model_ready": model_ready,
        "ready": ready,
        "live": live,
        "server": server,
        "repo_index": repo_index,
        "repo_load": repo_load,
        "repo_unload": repo_unload,
    }
    return handlers


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
    app.state.queue = routes  # closed with every model's queue when the door stops

    handlers = _handlers(routes)
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
    ("POST", "/v2/repository/index", "repo_index"),
    ("POST", "/v2/repository/models/{name}/load", "repo_load"),
    ("POST", "/v2/repository/models/{name}/unload", "repo_unload"),
]
