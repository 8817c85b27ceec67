"""``zoo-serve``: init, start, stop, restart, status, models, dashboard, log, convert, demo,
bench.

The commands live in :mod:`.start` (start, restart), :mod:`.stop`, :mod:`.status` and
:mod:`.tools` (the rest); this module builds the parser and runs one. Exit codes
(:mod:`.common`): 0 done, 1 not running / not ready, 2 a bad command line or config, 3 the
server failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from .._version import __version__
from ..config import RUNNERS
from ..errors import ZooServingError
from .common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_code
from .common import load as _load
from .models import add_arguments as models_arguments
from .models import cmd_models
from .start import cmd_restart, cmd_start
from .status import cmd_status
from .stop import cmd_stop
from .tools import cmd_bench, cmd_convert, cmd_dashboard, cmd_demo, cmd_init, cmd_log

__all__ = ["_load", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo-serve", description="Serve models from Redis.")
    parser.add_argument("--version", action="version", version=f"zoo-serve {__version__}")
    config_help = "config file (config.yaml); before or after the command"
    parser.add_argument("-c", "--config", default="config.yaml", help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # SUPPRESS: not given after the command, the one given before it (or the default) holds
        p.add_argument("-c", "--config", default=argparse.SUPPRESS, help=config_help)
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
        p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # start's own child
        p.set_defaults(func=func)

    p = with_config(sub.add_parser("stop", help="drain in-flight records and stop"))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to drain before SIGKILL")
    p.set_defaults(func=cmd_stop)

    p = with_config(sub.add_parser("status", help="readiness and workers; exit 0 only if ready"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("models", help="list, load or unload the server's models"))
    models_arguments(p)
    p.set_defaults(func=cmd_models)
    p = with_config(
        sub.add_parser("dashboard", help="serve the live status page alone (no inference)")
    )
    p.add_argument("--port", type=int, default=8089, help="port of the page (default 8089)")
    p.add_argument("--host", default=None, help="address to listen on (default http.host)")
    p.set_defaults(func=cmd_dashboard)

    p = with_config(sub.add_parser("log", help="show the error log"))
    p.add_argument("-n", type=_positive_int, default=50, help="lines to show")
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
    from ..bench.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of lines >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ZooServingError as exc:
        print(f"zoo-serve: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("\nzoo-serve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader left (`zoo-serve log | head`); flushing stdout at exit would raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
