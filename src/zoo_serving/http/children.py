"""Front door processes (``http.processes``): each runs :mod:`.child` on the listening socket
the server bound, so HTTP requests are parsed and answered beside the workers, not under their
GIL. They are started and watched from a thread of their own, which lives as long as they do:
the kernel stops them (``PR_SET_PDEATHSIG``) if that thread's process dies, however it dies."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import procs
from ..config import Config
from ..errors import ServerError

log = logging.getLogger(__name__)


class Children:
    """``config.http.processes`` front door processes on ``sock``."""

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: str | None = None
        self._keeper: threading.Thread | None = None

    def start(self, timeout_s: float) -> None:
        """Start them; return once every one accepts connections.

        Raises:
            ServerError: one did not start (what it wrote is in the message).
        """
        self.sock.listen(2048)  # connections queue up while the processes start
        self._keeper = threading.Thread(
            target=self._keep, args=(timeout_s,), name="zoo-http-children", daemon=True
        )
        self._keeper.start()
        self._ready.wait(timeout_s + 5)
        if self._error is not None or not self._ready.is_set():
            raise ServerError(
                f"the HTTP front door did not start: {self._error or 'no word in time'}"
            )

    def stop(self, timeout_s: float) -> None:
        """SIGTERM them (they finish requests in flight), then SIGKILL what is left."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout_s + 10)
            self._keeper = None

    def _keep(self, timeout_s: float) -> None:
        try:
            for _ in range(self.config.http.processes):
                self.procs.append(self._spawn())
            for proc in self.procs:
                self._wait_started(proc, timeout_s)
        except Exception as exc:
            self._error = str(exc)
            self._stop.set()
        self._ready.set()
        while not self._stop.wait(0.5):
            for proc in self.procs:
                if proc.poll() is not None:
                    log.error("HTTP front door process %d exited (%s)", proc.pid, proc.returncode)
        for proc in self.procs:
            procs.terminate(
                proc.pid,
                self.config.http.timeout_s + 2,
                is_ours=lambda p=proc: p.poll() is None,  # type: ignore[misc]
            )
            proc.wait()
            for pipe in (proc.stdout, proc.stdin):
                if pipe is not None:
                    pipe.close()

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self.sock.fileno()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this zoo_serving, in the child too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "zoo_serving.http.child", "--fd", str(fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(fd,),
            env=env,
            preexec_fn=procs.die_with_parent(),  # noqa: PLW1509 - the keeper thread lives on
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self.config.to_dict()).encode())
        proc.stdin.close()
        return proc

    def _wait_started(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                if line.strip() == b"started":
                    return
                raise ServerError(f"process {proc.pid} exited (code {proc.wait()})")
        raise ServerError(f"process {proc.pid} not accepting after {timeout_s}s")
