"""``zoo-serve stop``: the server of this work directory by a signal, only when the pid file
still names it; workers elsewhere (no local server) through the stream's stop request in
Redis. Works while ``config.yaml`` has an error, from what the work directory records."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from .. import procs
from ..broker.connection import redis_url
from ..config import Config
from ..errors import ConfigError, ZooServingError
from .common import (
    EXIT_FAILED,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    PID_FILE,
    is_ours,
    load,
    presence,
    read_server,
    server_record,
    work_dir_of,
)

SECOND_SIGNAL_S = 3.0  # after the drain timed out: time to stop at once before SIGKILL


def cmd_stop(args: argparse.Namespace) -> int:
    cfg: Config | None
    try:
        cfg = load(args)
    except ConfigError as exc:  # a typo must not keep a server from stopping
        cfg = None
        print(f"zoo-serve: {exc}", file=sys.stderr)
    work = cfg.work_dir if cfg is not None else work_dir_of(args.config)
    pid, note = read_server(work)
    if note:
        print(f"zoo-serve: {note}", file=sys.stderr)
    if pid is not None:
        if cfg is None:
            print(f"zoo-serve: stopping the server {work} records", file=sys.stderr)
        return _stop_local(work, pid, args.timeout)
    if cfg is None:
        print(f"not running in {work}; Redis not asked, as the config does not load")
        return EXIT_USAGE
    return _stop_remote(cfg, args.timeout)


def _stop_local(work: os.PathLike[str], pid: int, timeout_s: float) -> int:
    """SIGTERM the server (it drains, then stops its workers, remote ones too), SIGKILL after
    ``timeout_s``; every signal only while the pid file still names that very process."""
    from pathlib import Path

    work = Path(work)
    record = server_record(work) or {"pid": pid, "started": procs.start_time(pid)}

    def still_ours() -> bool:
        return is_ours(record)

    if still_ours():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while still_ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    if still_ours():
        print(
            f"zoo-serve: server (pid {pid}) still draining after {timeout_s}s; stopping it "
            "now (a second SIGTERM, then SIGKILL)",
            file=sys.stderr,
        )
        procs.terminate(pid, SECOND_SIGNAL_S, is_ours=still_ours)
    (work / PID_FILE).unlink(missing_ok=True)
    print(f"zoo-serve stopped (pid {pid})")
    return EXIT_OK


def _stop_remote(cfg: Config, timeout_s: float) -> int:
    """No server here: ask every worker of the stream to stop through Redis, and wait for
    them to go."""
    url = redis_url(cfg.data)
    try:
        with presence(cfg) as stream:
            live = len(stream.live_heartbeats())
            stream.request_stop()
            deadline = time.monotonic() + timeout_s
            while (left := len(stream.live_heartbeats())) and time.monotonic() < deadline:
                time.sleep(0.2)
    except (ZooServingError, OSError) as exc:
        if not cfg.data.src:  # the embedded default is down: nothing can run on it
            print("not running")
            return EXIT_OK
        print(
            f"zoo-serve: no server in {cfg.work_dir}, and the stop request for stream "
            f"{cfg.data.stream} could not be sent to {url}: {exc}; workers elsewhere, if "
            "any, were not asked to stop",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except Exception as exc:  # a Redis error past the connection (redis-py's own classes)
        print(f"zoo-serve: the stop request to {url} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not live:
        print("not running")
        return EXIT_OK
    if left:
        print(
            f"zoo-serve: asked the {live} worker(s) of stream {cfg.data.stream} to stop; "
            f"{left} still there after {timeout_s}s",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    print(f"zoo-serve stopped {live} worker(s) of stream {cfg.data.stream} (no local server)")
    return EXIT_OK
