"""The short way in to the front door's inference routes (see :class:`FastPaths`)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote


class FastPaths:
    """The front door's app with a short way in for inference: ``POST`` to ``/predict`` and
    ``/v2/models/<name>[/versions/<v>]/infer`` go straight to their route, past FastAPI's
    middleware and router (about half the door's time per request); the rest, and the
    lifespan, to the app. What ``HttpServer`` serves; the answers are the same either way.

    Args:
        app: an app from :func:`create_app`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.routes: Any = app.state.routes
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            found = _INFER_PATH.fullmatch(path)
            if found or path == "/predict":
                from starlette.requests import Request

                request = Request(scope, receive)
                if found:
                    named = tuple(unquote(g) for g in found.groups() if g is not None)
                    response = await self.routes.infer(request, *named)
                else:
                    response = await self.routes.predict(request)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
