"""``zoo-serve start`` and ``restart``: a server in the background of a work directory, or in
the foreground.

A background start runs ``zoo-serve start --foreground`` as a child in a session of its own,
its output appended to ``server.out``, and waits for that child itself to say it is ready
through a pipe (``--ready-fd``): readiness in Redis may be another server's. When the child
exits first, the error shown is the one this start wrote, not older lines of ``server.out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import procs
from ..config import Config
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    OUT_FILE,
    PID_FILE,
    TENSORBOARD_FILE,
    load,
    presence,
    read_server,
    tail,
    write_pid,
)

INTERRUPT_STOP_S = 15.0  # how long an interrupted start waits for its server to stop


def cmd_start(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.foreground:
        return _run_foreground(cfg, args)
    pid, note = read_server(cfg.work_dir)
    if note:
        print(f"zoo-serve: {note}", file=sys.stderr)
    if pid is not None:
        print(f"zoo-serve: already running (pid {pid}); `zoo-serve stop` first", file=sys.stderr)
        return EXIT_NOT_READY
    return _start_background(cfg, args)


def cmd_restart(args: argparse.Namespace) -> int:
    """Check the new config and model, then stop the running server and start again: a
    restart with a broken config or model leaves the old server serving."""
    from ..backends.preflight import check_model
    from .stop import cmd_stop

    cfg = load(args)
    if cfg.model.path:
        check_model(cfg.model.path, cfg.model.backend, cfg.params.engine_type)
    code = cmd_stop(args)
    if code != EXIT_OK:
        return code
    return cmd_start(args)


def _child_command(args: argparse.Namespace, ready_fd: int) -> list[str]:
    cmd = [sys.executable, "-m", "zoo_serving", "start", "--foreground"]
    cmd += ["-c", os.path.abspath(args.config), "--ready-fd", str(ready_fd)]
    if args.runner:
        cmd += ["--runner", args.runner]
    if args.http is not None:
        cmd += ["--http", str(args.http)]
    if args.tensorboard:
        cmd += ["--tensorboard"]
    return cmd


def _start_background(cfg: Config, args: argparse.Namespace) -> int:
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    out_path = work / OUT_FILE
    read_fd, write_fd = os.pipe()
    try:
        with open(out_path, "ab") as out:
            offset = out.tell()  # this start's output begins here
            proc = subprocess.Popen(
                _child_command(args, write_fd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is for us, not the server
                pass_fds=(write_fd,),
            )
    finally:
        os.close(write_fd)  # the child holds the only write end: EOF when it exits
    try:
        write_pid(work, proc.pid, os.path.abspath(args.config))
        state, info = _wait_started(cfg, proc, read_fd, args.timeout)
    except KeyboardInterrupt:
        return _interrupted(cfg, proc)
    finally:
        os.close(read_fd)
    if state == "ready":
        _print_started(cfg, proc.pid, info)
        return EXIT_OK
    if state == "exited":
        return _failed(cfg, proc, out_path, offset)
    print(
        f"zoo-serve: server (pid {proc.pid}) not ready after {args.timeout}s and still "
        "starting; `zoo-serve status` tells when it is, `zoo-serve log` what it did",
        file=sys.stderr,
    )
    return EXIT_NOT_READY


def _wait_started(
    cfg: Config, proc: subprocess.Popen[bytes], ready_fd: int, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """Wait for this start's server: ``ready`` (with what it said), ``exited`` or
    ``timeout``; draws the warm-up's progress from the workers' heartbeats meanwhile."""
    from ..progress import ProgressBar

    since = time.time()
    deadline = time.monotonic() + timeout_s
    said = b""
    open_pipe = True
    with ProgressBar(cfg.params.workers, "loading and warming up the model", "workers") as bar:
        while (left := deadline - time.monotonic()) > 0:
            if open_pipe and select.select([ready_fd], [], [], min(0.1, left))[0]:
                chunk = os.read(ready_fd, 65536)
                said += chunk
                open_pipe = bool(chunk)
                if b"\n" in said:
                    return "ready", _parse(said)
            elif not open_pipe:
                time.sleep(min(0.1, left))
            if proc.poll() is not None:
                return "exited", {}
            bar(min(cfg.params.workers, _ready_workers(cfg, since)))
    return "timeout", {}


def _parse(said: bytes) -> dict[str, Any]:
    try:
        info = json.loads(said.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _ready_workers(cfg: Config, since: float) -> int:
    try:
        with presence(cfg) as workers:
            return workers.ready_workers(since=since)
    except Exception:
        return 0


def _print_started(cfg: Config, pid: int, info: dict[str, Any]) -> None:
    redis = info.get("redis", "")
    where = f" on {redis}" + (" (embedded redis-server)" if info.get("embedded") else "")
    print(
        f"zoo-serve started (pid {pid}), serving stream {cfg.data.stream}{where}; "
        f"work dir {cfg.work_dir}"
    )
    for peer in info.get("peers", []):
        print(
            f"joined a server already serving stream {cfg.data.stream} with the same model: "
            f"pid {peer.get('pid')} on {peer.get('host')}, work dir {peer.get('work_dir')}"
        )
    if info.get("metrics"):
        print(f"metrics at {info['metrics']}")
    if info.get("http"):
        print(f"HTTP front door at {info['http']}")
    if info.get("tensorboard"):
        print(f"TensorBoard at {info['tensorboard']}")


def _failed(cfg: Config, proc: subprocess.Popen[bytes], out_path: Path, offset: int) -> int:
    """The server exited before it was ready: show this start's own error."""
    _forget_pid(cfg, proc.pid)
    code = proc.returncode
    own = tail(out_path, 40, offset)
    summary = [line for line in own.splitlines() if line.startswith("zoo-serve: ")]
    if summary:
        print(summary[-1], file=sys.stderr)
        print(f"  (the server's output: {out_path})", file=sys.stderr)
    else:
        print(
            f"zoo-serve: the server exited with code {code} before it was ready:", file=sys.stderr
        )
        print(own, file=sys.stderr)
    return code if code in (EXIT_USAGE, EXIT_FAILED) else EXIT_FAILED


def _interrupted(cfg: Config, proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C while waiting: stop the server this start launched (a second Ctrl-C kills it)."""
    print(
        f"\nzoo-serve: interrupted; stopping the starting server (pid {proc.pid})", file=sys.stderr
    )
    try:
        procs.stop_child(proc, INTERRUPT_STOP_S)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
    _forget_pid(cfg, proc.pid)
    return EXIT_INTERRUPTED


def _forget_pid(cfg: Config, pid: int) -> None:
    path = cfg.work_dir / PID_FILE
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _run_foreground(cfg: Config, args: argparse.Namespace) -> int:
    from ..server import serve

    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    pid, _note = read_server(cfg.work_dir)
    if pid is not None and pid != os.getpid():
        print(f"zoo-serve: already running (pid {pid}); `zoo-serve stop` first", file=sys.stderr)
        return EXIT_NOT_READY
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("zoo_serving").addHandler(handler)
    logging.getLogger("zoo_serving").setLevel(logging.INFO)
    write_pid(cfg.work_dir, os.getpid(), cfg.source)
    board = None
    if getattr(args, "tensorboard", False):
        cfg = cfg.replace(**{"log.summary": True})
        board = _start_tensorboard(cfg)

    def on_ready(server: Any) -> None:
        info: dict[str, Any] = {**server.urls, "embedded": server.embedded is not None}
        info["peers"] = server.peers
        if board is not None:
            info["tensorboard"] = (cfg.work_dir / TENSORBOARD_FILE).read_text().strip()
        for name in ("metrics", "http"):
            if name in info:
                print(f"{name} at {info[name]}", flush=True)
        _say_ready(getattr(args, "ready_fd", None), info)

    try:
        serve(cfg, on_ready=on_ready)
    finally:
        if board is not None:
            board.terminate()
            board.wait(10)
            (cfg.work_dir / TENSORBOARD_FILE).unlink(missing_ok=True)
        _forget_pid(cfg, os.getpid())
    return EXIT_OK


def _say_ready(fd: int | None, info: dict[str, Any]) -> None:
    """Tell the `zoo-serve start` waiting on ``fd`` that this server is ready."""
    if fd is None:
        return
    try:
        os.write(fd, json.dumps(info).encode() + b"\n")
        os.close(fd)
    except OSError:  # the start that waited is gone (interrupted): nobody to tell
        pass


def _start_tensorboard(cfg: Config) -> subprocess.Popen[bytes]:
    """TensorBoard over the summaries, a child of this server; its address goes to a file
    for the `zoo-serve start` that waits for us."""
    from ..observe.tensorboard import start_tensorboard

    proc, url = start_tensorboard(cfg.work_dir / "summary", cfg.work_dir / "tensorboard.log")
    (cfg.work_dir / TENSORBOARD_FILE).write_text(url)
    print(f"TensorBoard at {url}", flush=True)
    return proc
