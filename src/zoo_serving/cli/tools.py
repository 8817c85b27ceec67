"""``zoo-serve init``, ``dashboard``, ``log``, ``convert``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..config import default_config_text
from .common import load, tail


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    path.write_text(default_config_text(args.model or "/path/to/model"), encoding="utf-8")
    print(f"wrote {path}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The status page of the config's stream, served here until interrupted."""
    import uvicorn

    from ..http import create_status_app

    cfg = load(args)
    host = args.host or cfg.http.host
    app = create_status_app(cfg)
    print(
        f"zoo-serve: status of stream {cfg.data.stream} on http://{host}:{args.port}/", flush=True
    )
    uvicorn.run(app, host=host, port=args.port, log_config=None, access_log=False, lifespan="on")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    cfg = load(args)
    path = cfg.work_dir / ("redis/redis.log" if args.redis else "error.log")
    if not path.exists():
        print(f"no log yet at {path}", file=sys.stderr)
        return 1
    print(tail(path, args.n))
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
    from ..backends.convert import convert_to_file
    from ..config import check_shape
    from ..progress import ProgressBar

    shape = None
    if args.shape:
        shape = check_shape("--shape", args.shape)
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
    from ..bench.cli import run

    return run(args, load(args))
