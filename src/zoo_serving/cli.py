"""``zoo-serve``: init, start, stop, restart, status, log, convert, demo, bench."""

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
from pathlib import Path
from typing import Any

from . import keys
from .config import RUNNERS, Config, default_config_text, load_config
from .errors import ZooServingError
from .heartbeat import HEARTBEAT_TTL_S, read_heartbeats

PID_FILE = "zoo-serve.pid"
OUT_FILE = "server.out"
TENSORBOARD_FILE = "tensorboard.url"  # the address of the TensorBoard `start --tensorboard` runs


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if getattr(args, "runner", None):
        cfg = cfg.replace(**{"params.runner": args.runner})
    if getattr(args, "http", None) is not None:
        cfg = cfg.replace(**{"http.port": args.http})
    return cfg


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(cfg: Config) -> int | None:
    path = cfg.work_dir / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _pid_alive(pid):
        return pid
    path.unlink(missing_ok=True)  # a stale pid file from a server that died
    return None


# ------------------------------------------------------------------ commands


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    path.write_text(default_config_text(args.model or "/path/to/model"), encoding="utf-8")
    print(f"wrote {path}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.foreground:
        return _run_foreground(cfg, args)
    pid = _read_pid(cfg)
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
        print(_tail(cfg.work_dir / OUT_FILE, 20), file=sys.stderr)
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
    from .progress import ProgressBar

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
        client = _status_client(cfg)
        try:
            beats = read_heartbeats(client, cfg.data.stream)
        finally:
            client.close()
    except Exception:
        return 0
    return sum(1 for beat in beats.values() if beat.get("ready"))


def _run_foreground(cfg: Config, args: argparse.Namespace) -> int:
    from .server import serve

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
    from .summary import start_tensorboard

    proc, url = start_tensorboard(cfg.work_dir / "summary", cfg.work_dir / "tensorboard.log")
    (cfg.work_dir / TENSORBOARD_FILE).write_text(url)
    print(f"TensorBoard at {url}", flush=True)
    return proc


def _is_ready(cfg: Config) -> bool:
    try:
        client = _status_client(cfg)
        try:
            return bool(client.exists(keys.ready(cfg.data.stream)))
        finally:
            client.close()
    except Exception:
        return False


def _status_client(cfg: Config) -> Any:
    from .queue import connect

    return connect(cfg.data, socket_timeout=2.0, socket_connect_timeout=1.0)


def cmd_stop(args: argparse.Namespace) -> int:
    from .server import request_stop

    cfg = _load(args)
    pid = _read_pid(cfg)
    if pid is None:
        print("not running")
        return 0
    request_stop(cfg)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if _pid_alive(pid):
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
    from .metrics import stream_stats

    cfg = _load(args)
    pid = _read_pid(cfg)
    status: dict[str, Any] = {"stream": cfg.data.stream, "pid": pid, "ready": False, "workers": []}
    try:
        client = _status_client(cfg)
    except ZooServingError as exc:
        status["redis"] = str(exc)
        return _print_status(status, args)
    try:
        now = time.time()
        stream = cfg.data.stream
        status["ready"] = bool(client.exists(keys.ready(stream)))
        beats = read_heartbeats(client, stream, max_age_s=HEARTBEAT_TTL_S)
        status["workers"] = [{"name": name, **beat} for name, beat in beats.items()]
        status.update(stream_stats(client, stream, cfg.data.group))
    finally:
        client.close()
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


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip("\n")
    except OSError:
        return ""


def cmd_log(args: argparse.Namespace) -> int:
    cfg = _load(args)
    path = cfg.work_dir / ("redis/redis.log" if args.redis else "error.log")
    if not path.exists():
        print(f"no log yet at {path}", file=sys.stderr)
        return 1
    print(_tail(path, args.n))
    if args.follow:
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(0, os.SEEK_END)
            try:
                while True:
                    line = fh.readline()
                    if line:
                        print(line, end="", flush=True)
                    else:
                        time.sleep(0.2)
            except KeyboardInterrupt:
                return 0
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .backends.convert import convert_to_file
    from .progress import ProgressBar

    shape = None
    if args.shape:
        from .config import _check_shape

        shape = _check_shape("--shape", args.shape)
    bar = ProgressBar(0, f"converting {Path(args.model).name}", unit="layers")
    try:
        out = convert_to_file(args.model, args.out, shape, progress=bar)
    finally:
        bar.close()
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.images, work_dir=args.work_dir, top_n=args.top_n)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args, _load(args))


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo-serve", description="Serve models from Redis.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default="config.yaml", help="config file (config.yaml)")
        return p

    p = with_config(sub.add_parser("init", help="write a commented default config.yaml"))
    p.add_argument("--model", help="model directory to put in model.path")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    for name, func, text in (
        ("start", cmd_start, "start serving (in the background)"),
        ("restart", cmd_restart, "stop, then start"),
    ):
        p = with_config(sub.add_parser(name, help=text))
        p.add_argument("--runner", choices=RUNNERS, help="override params.runner")
        p.add_argument("--foreground", action="store_true", help="serve in this process")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for ready")
        p.add_argument(
            "--http", type=int, metavar="PORT", help="also serve HTTP on PORT (sets http.port)"
        )
        p.add_argument(
            "--tensorboard",
            action="store_true",
            help="also run TensorBoard on localhost over the summaries (sets log.summary y)",
        )
        p.set_defaults(func=func)

    p = with_config(sub.add_parser("stop", help="drain in-flight records and stop"))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to drain before SIGKILL")
    p.set_defaults(func=cmd_stop)

    p = with_config(sub.add_parser("status", help="readiness and workers; exit 0 only if ready"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("log", help="show the error log"))
    p.add_argument("-n", type=int, default=50, help="lines to show")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--redis", action="store_true", help="the embedded Redis server's log")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("convert", help="convert a Caffe or BigDL model to an ONNX file")
    p.add_argument("model", help="model directory (or .prototxt / .model file)")
    p.add_argument("out", help="the ONNX file to write")
    p.add_argument(
        "--shape", help="input shape without batch, e.g. 3,224,224, where the net declares none"
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="build a small model, serve it, classify some images")
    p.add_argument("images", nargs="*", help="image files (default: images the demo draws)")
    p.add_argument("--work-dir", default=None, help="where the demo model and config go")
    p.add_argument("--top-n", type=int, default=3, help="classes per answer")
    p.set_defaults(func=cmd_demo)

    p = with_config(sub.add_parser("bench", help="drive load against the running server"))
    from .bench.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ZooServingError as exc:
        print(f"zoo-serve: {exc}", file=sys.stderr)
        return 2
