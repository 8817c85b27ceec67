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

from .app import create_app, create_status_app, model_name
from .server import HttpServer, serve_http

__all__ = ["HttpServer", "create_app", "create_status_app", "model_name", "serve_http"]
