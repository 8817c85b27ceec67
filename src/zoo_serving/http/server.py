"""The front door served by uvicorn in a background thread of the server process."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from ..config import load_config
from ..errors import ServerError
from .app import create_app, model_name
from .children import Children
from .fast import FastPaths

log = logging.getLogger(__name__)


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
        self._children: Children | None = None
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
        """Bind and serve; returns once uvicorn accepts connections (in every process, with
        ``http.processes``).

        Raises:
            ServerError: the port is taken, or uvicorn did not start.
        """
        import uvicorn

        self._socket = self._bind()
        if self.config.http.processes:
            self._children = Children(self.config, self._socket)
            try:
                self._children.start(timeout_s)
            except BaseException:
                self.stop(timeout_s=5.0)
                raise
            log.info(
                "HTTP front door on %s, model %r, %d processes",
                self.url,
                model_name(self.config),
                self.config.http.processes,
            )
            return self
        app = create_app(self.config)
        config = uvicorn.Config(
            FastPaths(app),
            host=self.host,
            port=self._port,
            loop="auto",  # uvloop where installed
            http="auto",  # httptools where installed, else h11
            ws="none",
            proxy_headers=False,  # the door trusts no forwarding headers (and skips their pass)
            lifespan="on",  # its shutdown closes the door's Redis clients on their loop
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
        ``timeout_s``); the app's shutdown closes its Redis clients."""
        if self._children is not None:
            self._children.stop(self.config.http.timeout_s + 2 if timeout_s is None else timeout_s)
            self._children = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.config.http.timeout_s + 2 if timeout_s is None else timeout_s)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None

    def __enter__(self) -> HttpServer:
        running = self._server is not None or self._children is not None
        return self if running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_http(config: Any, host: str | None = None, port: int | None = None) -> HttpServer:
    """Start the front door for ``config`` in a background thread; stop it with ``.stop()``.

    ``host`` and ``port`` override ``http.host`` (default 127.0.0.1) and ``http.port``.
    """
    return HttpServer(config, host=host, port=port).start()
