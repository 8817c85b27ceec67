"""``zoo-serve start``, ``stop``, ``restart`` and ``status``: a server in the background of a
work directory (pid file, output file), its readiness and its workers from Redis."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ..broker.presence import HEARTBEAT_TTL_S
from ..broker.streams import stream_stats
from ..config import Config
from ..errors import ZooServingError
from .common import OUT_FILE, PID_FILE, TENSORBOARD_FILE, load, pid_alive, presence, read_pid, tail


def cmd_start(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.foreground:
        return _run_foreground(cfg, args)
    pid = read_pid(cfg)
    if pid is not None:
        print(f"already running (pid {pid}); `zoo-serve stop` first", file=sys.stderr)
        return 1
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "zoo_serving",
        "start",
        "--foreground",
        "-c",
        os.path.abspath(args.config),
    ]
    if args.runner:
        cmd += ["--runner", args.runner]
    if args.http is not None:
        cmd += ["--http", str(args.http)]
    if args.tensorboard:
        cmd += ["--tensorboard"]
    out = open(cfg.work_dir / OUT_FILE, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    out.close()
    (cfg.work_dir / PID_FILE).write_text(str(proc.pid))
    state = _wait_started(cfg, proc, args.timeout)
    if state == "exited":
        (cfg.work_dir / PID_FILE).unlink(missing_ok=True)
        print(f"server failed to start (exit {proc.returncode}):", file=sys.stderr)
        print(tail(cfg.work_dir / OUT_FILE, 20), file=sys.stderr)
        return 1
    if state == "ready":
        print(
            f"zoo-serve started (pid {proc.pid}), serving stream {cfg.data.stream}; "
            f"work dir {cfg.work_dir}"
        )
        if cfg.http.port:
            print(f"HTTP front door at http://{cfg.http.host}:{cfg.http.port}")
        board = cfg.work_dir / TENSORBOARD_FILE
        if args.tensorboard and board.exists():
            print(f"TensorBoard at {board.read_text().strip()}")
        return 0
    print(
        f"server (pid {proc.pid}) not ready after {args.timeout}s; see `zoo-serve log`",
        file=sys.stderr,
    )
    return 1


def _wait_started(cfg: Config, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """Wait for the server: ready, exited or timeout; draws the warm-up's progress meanwhile."""
    from ..progress import ProgressBar

    deadline = time.monotonic() + timeout_s
    with ProgressBar(cfg.params.workers, "loading and warming up the model", "workers") as bar:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return "exited"
            bar(_ready_workers(cfg))
            if _is_ready(cfg):
                return "ready"
            time.sleep(0.1)
    return "timeout"


def _ready_workers(cfg: Config) -> int:
    try:
        with presence(cfg) as workers:
            return workers.ready_workers()
    except Exception:
        return 0


def _run_foreground(cfg: Config, args: argparse.Namespace) -> int:
    from ..server import serve

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("zoo_serving").addHandler(handler)
    logging.getLogger("zoo_serving").setLevel(logging.INFO)
    pid_file = cfg.work_dir / PID_FILE
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    board = None
    if getattr(args, "tensorboard", False):
        cfg = cfg.replace(**{"log.summary": True})
        board = _start_tensorboard(cfg)
    try:
        serve(cfg)
    finally:
        if board is not None:
            board.terminate()
            board.wait(10)
            (cfg.work_dir / TENSORBOARD_FILE).unlink(missing_ok=True)
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    return 0


def _start_tensorboard(cfg: Config) -> subprocess.Popen[bytes]:
    """TensorBoard over the summaries, a child of this server; its address goes to a file
    for the `zoo-serve start` that waits for us."""
    from ..observe.tensorboard import start_tensorboard

    proc, url = start_tensorboard(cfg.work_dir / "summary", cfg.work_dir / "tensorboard.log")
    (cfg.work_dir / TENSORBOARD_FILE).write_text(url)
    print(f"TensorBoard at {url}", flush=True)
    return proc


def _is_ready(cfg: Config) -> bool:
    try:
        with presence(cfg) as workers:
            return workers.is_ready()
    except Exception:
        return False


def cmd_stop(args: argparse.Namespace) -> int:
    from ..server import request_stop

    cfg = load(args)
    pid = read_pid(cfg)
    if pid is None:
        print("not running")
        return 0
    request_stop(cfg)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if pid_alive(pid):
        print(
            f"server (pid {pid}) still draining after {args.timeout}s; sending SIGKILL",
            file=sys.stderr,
        )
        os.kill(pid, signal.SIGKILL)
    (cfg.work_dir / PID_FILE).unlink(missing_ok=True)
    print(f"zoo-serve stopped (pid {pid})")
    return 0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def cmd_restart(args: argparse.Namespace) -> int:
    cmd_stop(args)
    return cmd_start(args)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)
    pid = read_pid(cfg)
    status: dict[str, Any] = {"stream": cfg.data.stream, "pid": pid, "ready": False, "workers": []}
    try:
        with presence(cfg) as workers:
            now = time.time()
            status["ready"] = workers.is_ready()
            beats = workers.heartbeats(max_age_s=HEARTBEAT_TTL_S)
            status["workers"] = [{"name": name, **beat} for name, beat in beats.items()]
            status.update(stream_stats(workers.redis, cfg.data.stream, cfg.data.group))
    except ZooServingError as exc:
        status["redis"] = str(exc)
        return _print_status(status, args)
    workers = status["workers"]
    status["served"] = sum(w.get("succeeded", 0) + w.get("failed", 0) for w in workers)
    status["throughput_1m"] = round(sum(_last_minute_rate(w, now) for w in workers), 2)
    return _print_status(status, args)


def _last_minute_rate(beat: dict[str, Any], now: float) -> float:
    """Records/s a worker answered over the last minute, or over its life while younger."""
    return float(beat.get("served_1m", 0)) / min(60.0, max(1.0, now - beat.get("started", 0)))


def _print_status(status: dict[str, Any], args: argparse.Namespace) -> int:
    code = 0 if status["ready"] else 1
    if args.json:
        print(json.dumps(status))
        return code
    state = "ready" if status["ready"] else ("starting" if status["pid"] else "not running")
    print(f"zoo-serve: {state}")
    print(f"  stream: {status['stream']}  server pid: {status['pid'] or '-'}")
    if "redis" in status:
        print(f"  redis: {status['redis']}")
    else:
        print(
            f"  queued: {status['queued']}  lag: {status['lag']}  pending: {status['pending']}"
            f"  dead letters: {status['dead_letter']}"
        )
        print(
            f"  served: {status['served']} records, "
            f"{status['throughput_1m']} records/s over the last minute"
        )
    for w in status["workers"]:
        print(
            f"  worker {w['name']} on {w['host']} pid {w['pid']}: "
            f"{'ready' if w['ready'] else 'loading'}, {w['succeeded']} ok, {w['failed']} failed"
        )
    return code
