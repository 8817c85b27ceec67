"""What the ``zoo-serve`` commands share: the config as the command line amends it, the work
directory's files (pid file, server output), and the stream's presence in Redis."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..broker.connection import connect
from ..broker.presence import Presence
from ..config import Config, load_config

PID_FILE = "zoo-serve.pid"
OUT_FILE = "server.out"
TENSORBOARD_FILE = "tensorboard.url"  # the address of the TensorBoard `start --tensorboard` runs


def load(args: argparse.Namespace) -> Config:
    """The config of ``-c``, with ``--runner`` and ``--http`` applied."""
    cfg = load_config(args.config)
    if getattr(args, "runner", None):
        cfg = cfg.replace(**{"params.runner": args.runner})
    if getattr(args, "http", None) is not None:
        cfg = cfg.replace(**{"http.port": args.http})
    return cfg


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(cfg: Config) -> int | None:
    """The pid of the server this work directory runs, or None (a stale pid file is removed)."""
    path = cfg.work_dir / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid):
        return pid
    path.unlink(missing_ok=True)  # a stale pid file from a server that died
    return None


@contextlib.contextmanager
def presence(cfg: Config) -> Iterator[Presence]:
    """The stream's presence keys on a short-lived connection with short timeouts.

    Raises:
        BrokerConnectionError: Redis does not answer.
    """
    client = connect(cfg.data, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        yield Presence(client, cfg.data.stream)
    finally:
        client.close()


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ("" if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip("\n")
    except OSError:
        return ""
