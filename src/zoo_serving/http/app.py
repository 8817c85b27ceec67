"""The front door's app: its routes, how each request becomes records on the stream and how
results and errors become responses (FastAPI, imported when an app is built)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..config import Config, load_config
from ..errors import MissingDependencyError, ZooServingError
from . import binary, bodies, limits, status
from .bodies import HttpError
from .door import DoorQueue, Doors, http_status
from .repository import RepositoryRoutes
from .status import StatusBoard

log = logging.getLogger(__name__)

OFF_LOOP_BYTES = 1 << 20  # a body this large is parsed in a thread, off the event loop


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
        return _reply({"error": exc.message or str(exc), "code": exc.code}, http_status(exc))
    import redis

    if isinstance(exc, redis.exceptions.RedisError):
        return _reply({"error": f"Redis is unavailable: {exc}", "code": "queue"}, 503)
    log.exception("HTTP request failed")
    return _reply({"error": f"{type(exc).__name__}: {exc}", "code": "server"}, 500)


async def _off_loop_if_large(size: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, in a thread when it works on a large body (parsing megabytes of JSON
    would hold every other request up), else here on the event loop."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


class _Routes:
    """What each route does, on the event loop: every Redis call is awaited there (one
    sender task and one inbox listener for all requests); only large bodies are parsed in a
    thread."""

    def __init__(self, config: Config) -> None:
        from ..broker.connection import connect
        from ..repository.api import Models

        self.config = config
        self.name = model_name(config)
        self.doors = Doors(config, self.name)
        # the repository extension's calls wait for workers: sync, in a thread
        self.models = Models(connect(config.data), config.data.stream)
        self.board = StatusBoard(config, self.name)
        self.max_payload_bytes = config.data.max_payload_bytes
        self.body_limit = max(4 * self.max_payload_bytes, 1 << 20)  # JSON: ~4x bytes

    async def door(self, requested: str | None = None, version: str | None = None) -> DoorQueue:
        return await self.doors.get(requested, version)

    def close(self) -> None:
        self.models.redis.close()

    async def predict(self, request: Any) -> Any:
        """Cluster Serving's ``POST /predict``; ``"model"`` in the body picks a model of the
        repository (default: the default model)."""
        try:
            raw = await limits.read_body(request, self.body_limit)
            body = await _off_loop_if_large(len(raw), limits.parse_json, raw)
            model = body.get("model") if isinstance(body, dict) else None
            if model is not None and not isinstance(model, str):
                raise bodies.bad(f"'model' names a model of the repository, got {model!r}")
            door = await self.door(model)
            info = await door.model() or {"inputs": []}
            dtypes = [np.dtype(s["dtype"]) for s in info["inputs"]]
            records = await _off_loop_if_large(len(raw), bodies.parse_instances, body, dtypes)
            limits.check_payloads(records, self.max_payload_bytes)
            await door.require_ready()
            return _reply(bodies.predictions(await door.run(records)))
        except Exception as exc:
            return _failure(exc)

    async def infer(self, request: Any, *named: str) -> Any:
        """KServe v2 ``POST /v2/models/<name>[/versions/<v>]/infer``, JSON or binary."""
        try:
            door = await self.door(*named)
            raw = await limits.read_body(request, self.body_limit)
            header = request.headers.get(binary.HEADER_LENGTH)
            body, tensors, wanted = await _off_loop_if_large(len(raw), _v2_inputs, raw, header)
            info = await door.require_ready()
            offered = [s["name"] for s in bodies.v2_output_specs(info)]
            unknown = [name for name in wanted or () if name not in offered]
            if unknown:
                raise bodies.bad(
                    f"outputs {unknown} are not among the outputs of model {named[0]!r}: "
                    f"{offered} (as GET /v2/models/{named[0]} lists them)"
                )
            ranks = {s["name"]: len(s["shape"]) - 1 for s in info["inputs"]}
            records, batched = bodies.split_batch(tensors, ranks)
            limits.check_payloads(records, self.max_payload_bytes)
            results = await door.run(records)
            outputs = [s["name"] for s in info["outputs"]]
            specs, arrays = bodies.v2_output_arrays(results, outputs, batched, wanted)
        except Exception as exc:
            return _failure(exc)
        content: dict[str, Any] = {"model_name": named[0]}
        if len(named) > 1:
            content["model_version"] = named[1]
        if isinstance(body.get("id"), str):
            content["id"] = body["id"]
        content["outputs"] = specs
        size = sum(a.nbytes for a in arrays)
        answer, head = await _off_loop_if_large(
            size * 8, binary.encode_answer, content, arrays, binary.binary_outputs(body)
        )
        return _binary_reply(answer, head)

    async def metadata(self, *named: str) -> Any:
        try:
            door = await self.door(*named)
            info = await door.model()
            if info is None:
                raise HttpError(503, f"model {named[0]!r} not loaded yet: no worker published it")
            return _reply(
                {
                    "name": named[0],
                    "versions": await self.doors.versions(named[0]),
                    "platform": info.get("backend", ""),
                    "inputs": [bodies.v2_tensor_spec(s) for s in info["inputs"]],
                    "outputs": bodies.v2_output_specs(info),
                }
            )
        except Exception as exc:
            return _failure(exc)

    async def ready(self, *named: str) -> Any:
        """200 ``{"ready": true}`` while a worker is ready, else 503 ``{"ready": false}``."""
        try:
            door = await self.door(*named) if named else self.doors.default
            ok = await door.ready()
        except Exception as exc:
            return _failure(exc)
        which = {"name": named[0]} if named else {}
        return _reply({**which, "ready": ok}, 200 if ok else 503)


def _v2_inputs(raw: bytes, header: str | None) -> tuple[Any, dict[str, np.ndarray], Any]:
    body, data = binary.split_body(raw, header)
    if data is None:
        tensors, wanted = bodies.parse_v2_inputs(body)
    else:
        inputs = binary.BinaryInputs(data)
        tensors, wanted = bodies.parse_v2_inputs(body, inputs)
        inputs.check_used()
    return body, tensors, wanted


def _binary_reply(answer: bytes, header_length: int | None) -> Any:
    from starlette.responses import Response

    if header_length is None:
        return Response(answer, 200, media_type="application/json")
    response = Response(answer, 200, media_type="application/octet-stream")
    response.headers["Inference-Header-Content-Length"] = str(header_length)
    return response


def create_app(config: Any) -> Any:
    """The FastAPI app of the front door for ``config`` (a path, mapping or Config).

    Routes: see :data:`ROUTES`. Any other path or method is a 404 or 405 with the JSON error
    body every route answers with, ``{"error": ..., "code": ...}``.

    Raises:
        MissingDependencyError: FastAPI or uvicorn is not installed.
        BrokerConnectionError: Redis does not answer.
    """
    fastapi = _imports()
    routes = _Routes(load_config(config))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await routes.doors.check()  # Redis answers, or the door does not start
        routes.board.start()
        try:
            yield
        finally:
            routes.board.stop()
            await routes.doors.close()  # on the loop its Redis connections belong to
            routes.close()

    app = _app(fastapi, lifespan, _handlers(routes), ROUTES)
    app.state.doors = routes.doors
    app.state.board = routes.board
    app.state.routes = routes
    return app


def create_status_app(config: Any) -> Any:
    """An app serving only the status page at ``/`` and its ``/status.json``, for
    ``zoo-serve dashboard`` (no inference routes).

    Raises:
        MissingDependencyError: FastAPI or uvicorn is not installed.
    """
    fastapi = _imports()
    cfg = load_config(config)
    board = StatusBoard(cfg, model_name(cfg))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        board.start()
        try:
            yield
        finally:
            board.stop()

    handlers = _status_handlers(board)
    app = _app(fastapi, lifespan, handlers, STATUS_ROUTES)
    app.state.board = board
    return app


def _app(fastapi: Any, lifespan: Any, handlers: dict[str, Any], routes: list[Any]) -> Any:
    """A FastAPI app of ``routes`` whose every answer, errors included, is JSON (the page
    aside)."""
    from starlette.exceptions import HTTPException

    app = fastapi.FastAPI(
        title="zoo_serving", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    for method, path, handler in routes:
        app.add_route(path, handlers[handler], methods=[method])

    async def no_route(request: Any, exc: Any) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        where = f"{request.method} {request.url.path}"
        message = {
            404: f"no route {where}; the routes are " + ", ".join(f"{m} {p}" for m, p, _ in routes),
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


def _handlers(routes: _Routes) -> dict[str, Any]:
    """Starlette-style handlers (the request in, a response out), by name: the JSON is
    parsed in the routes, so a malformed body is our 400 with a message, not a framework's
    422."""

    def names(request: Any) -> tuple[str, ...]:
        params = request.path_params
        return tuple(params[k] for k in ("name", "version") if k in params)

    async def predict(request: Any) -> Any:
        return await routes.predict(request)

    async def infer(request: Any) -> Any:
        return await routes.infer(request, *names(request))

    async def metadata(request: Any) -> Any:
        return await routes.metadata(*names(request))

    async def model_ready(request: Any) -> Any:
        return await routes.ready(*names(request))

    async def ready(request: Any) -> Any:
        return await routes.ready()

    async def live(request: Any) -> Any:
        return _reply({"live": True})

    async def server(request: Any) -> Any:
        extensions = ["binary_tensor_data", "model_repository"]
        return _reply({"name": "zoo_serving", "version": __version__, "extensions": extensions})

    return {
        **_repository_handlers(routes),
        **_status_handlers(routes.board),
        "predict": predict,
        "infer": infer,
        "metadata": metadata,
        "model_ready": model_ready,
        "ready": ready,
        "live": live,
        "server": server,
    }


def _repository_handlers(routes: _Routes) -> dict[str, Any]:
    """The KServe v2 / Triton repository extension's handlers (see :mod:`.repository`)."""
    repository = RepositoryRoutes(routes.models, routes.config.http.timeout_s)

    async def repo_call(request: Any, fn: Any, *args: Any) -> Any:
        """Read a body that may be empty (``{}`` then); run ``fn(body, *args)`` in a thread
        (it waits for the workers)."""
        try:
            raw = await limits.read_body(request, routes.body_limit)
            body = limits.parse_json(raw) if raw.strip() else {}
            return _reply(await asyncio.to_thread(fn, body, *args))
        except Exception as exc:
            return _failure(exc)

    async def repo_index(request: Any) -> Any:
        return await repo_call(request, repository.index)

    async def repo_load(request: Any) -> Any:
        return await repo_call(request, repository.load, request.path_params["name"])

    async def repo_unload(request: Any) -> Any:
        return await repo_call(request, repository.unload, request.path_params["name"])

    return {"repo_index": repo_index, "repo_load": repo_load, "repo_unload": repo_unload}


def _status_handlers(board: StatusBoard) -> dict[str, Any]:
    from starlette.responses import Response

    async def status_page(request: Any) -> Any:
        return Response(status.page(), 200, media_type="text/html; charset=utf-8")

    async def status_json(request: Any) -> Any:
        return _reply(board.snapshot())

    return {"page": status_page, "status": status_json}


# the status page and its figures: on the front door, and alone (zoo-serve dashboard)
STATUS_ROUTES = [("GET", "/", "page"), ("GET", "/status.json", "status")]

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
    *STATUS_ROUTES,
]
