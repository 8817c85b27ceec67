"""What the ``zoo-serve`` commands share: exit codes, the config as the command line amends it,
the work directory's files (pid file, server output), and the stream's presence in Redis."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import procs
from ..broker.connection import connect
from ..broker.presence import Presence
from ..config import Config, load_config
from ..errors import ConfigError, ZooServingError

PID_FILE = "zoo-serve.pid"  # JSON: pid, start time, config of the server this work dir runs
OUT_FILE = "server.out"  # the background server's stdout and stderr, appended per start
TENSORBOARD_FILE = "tensorboard.url"  # the address of the TensorBoard `start --tensorboard` runs

# exit codes: the same error gives the same code, in the foreground or not
EXIT_OK = 0
EXIT_NOT_READY = 1  # a state, not an error: not running, not ready, already running, timeout
EXIT_USAGE = 2  # a bad command line or config (argparse's own code for usage errors)
EXIT_FAILED = 3  # the server failed: its model, Redis, the stream taken, a lost stop request
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE), as `| head`


def exit_code(exc: ZooServingError) -> int:
    """The exit code of a command that ended with ``exc``."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def load(args: argparse.Namespace) -> Config:
    """The config of ``-c``, with ``--runner`` and ``--http`` applied."""
    cfg = load_config(args.config)
    if getattr(args, "runner", None):
        cfg = cfg.replace(**{"params.runner": args.runner})
    if getattr(args, "http", None) is not None:
        cfg = cfg.replace(**{"http.port": args.http})
    return cfg


def work_dir_of(config_path: str) -> Path:
    """The work directory of a config that does not load (a typo): its ``log.dir`` if that
    much can be read, else ``.zoo-serving`` beside it, as :attr:`Config.work_dir`."""
    import yaml

    base = Path(os.path.abspath(config_path)).parent
    try:
        raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        found = raw["log"]["dir"]
    except Exception:
        found = None
    if isinstance(found, str) and found.strip():
        return base / os.path.expanduser(found.strip())
    return base / ".zoo-serving"


def write_pid(work_dir: Path, pid: int, config_path: str | None) -> None:
    """Record the server of ``work_dir``: its pid, its start time (so a pid reused by another
    program later is told apart) and its config."""
    record = {"pid": pid, "started": procs.start_time(pid), "config": config_path}
    (work_dir / PID_FILE).write_text(json.dumps(record))


def _read_record(work_dir: Path) -> dict[str, Any] | None:
    try:
        text = (work_dir / PID_FILE).read_text().strip()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if isinstance(record, int):  # a pid file of an earlier release: the pid alone
        return {"pid": record, "started": None}
    return record if isinstance(record, dict) else None


def is_ours(record: dict[str, Any]) -> bool:
    """The process a pid file names still runs and is the server it recorded: same start
    time (or, for an old pid file without one, a zoo_serving command line). A zombie is not."""
    pid = int(record.get("pid") or 0)
    if not procs.alive(pid):
        return False
    if record.get("started") is not None:
        return procs.start_time(pid) == record["started"]
    line = procs.cmdline(pid)
    return "zoo_serving" in line or "zoo-serve" in line


def read_server(work_dir: Path) -> tuple[int | None, str]:
    """The pid of the server ``work_dir`` runs, or None; a pid file naming a process that is
    gone or is another program now is removed, and the note says so."""
    record = _read_record(work_dir)
    if record is None:
        if (work_dir / PID_FILE).exists():
            (work_dir / PID_FILE).unlink(missing_ok=True)
            return None, f"removed an unreadable pid file in {work_dir}"
        return None, ""
    if is_ours(record):
        return int(record["pid"]), ""
    (work_dir / PID_FILE).unlink(missing_ok=True)
    pid = record.get("pid")
    if procs.alive(int(pid or 0)):
        return None, f"removed a stale pid file: pid {pid} is another program now, left alone"
    return None, ""


def server_record(work_dir: Path) -> dict[str, Any] | None:
    """The pid file's record when it names a running server, else None."""
    record = _read_record(work_dir)
    return record if record is not None and is_ours(record) else None


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


def tail(path: Path, lines: int, offset: int = 0) -> str:
    """The last ``lines`` lines of a text file from byte ``offset`` on ("" if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
