"""``zoo-serve bench``: options -> inputs -> one load point per level -> table, JSON, PNG."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..config import Config
from ..errors import ConfigError
from . import LoadPoint, closed_loop, open_loop
from .inputs import image_inputs, npy_inputs, random_inputs
from .report import failed, format_table, notes, write_json, write_plot
from .server import connect_checked, model_info

DEFAULT_CLIENTS = (1, 8, 32)
T = TypeVar("T", int, float)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``zoo-serve bench`` (beside ``-c``)."""
    p.add_argument(
        "--clients",
        metavar="N[,N...]",
        help="closed loop: records in flight, a level per value (default: 1,8,32 "
        "unless --rate is given)",
    )
    p.add_argument("--rate", metavar="R[,R...]", help="open loop: records/s, a level per value")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per level (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (2)")
    p.add_argument("--processes", type=int, default=1, help="load processes sharing the load (1)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds after which a record is missing (10)"
    )
    p.add_argument("--json", metavar="PATH", help="write every level and the setup as JSON")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG of throughput and p99 against the load"
    )
    p.add_argument(
        "--image",
        action="append",
        metavar="PATH",
        help="send this image (a directory: every image in it); repeatable",
    )
    p.add_argument(
        "--model", help="a model of the server's repository (default: the default model)"
    )
    p.add_argument(
        "--npy",
        action="append",
        metavar="PATH",
        help="send this saved array (.npy: a record or a stack; .npz: an array per input)",
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run every level, print the table; 0 when every record came back well, else 1."""
    clients = _levels("--clients", args.clients, int)
    rates = _levels("--rate", args.rate, float)
    if not clients and not rates:
        clients = list(DEFAULT_CLIENTS)
    _check(args)
    stream = cfg.data.stream
    if args.model:  # its own stream, from the model index the server publishes
        from ..broker.connection import connect
        from ..client.common import model_stream

        probe = connect(cfg.data)
        try:
            stream = model_stream(probe, stream, args.model)
        finally:
            probe.close()
    db = connect_checked(cfg.data, None, stream)
    try:
        info = model_info(db, stream)
    finally:
        db.close()
    inputs, kind = _inputs(args, cfg, info)
    common: dict[str, Any] = dict(
        duration_s=args.duration, warmup_s=args.warmup, progress=True, timeout_s=args.timeout
    )
    points: list[LoadPoint] = []
    for n in clients:
        points.append(
            closed_loop(cfg, stream, inputs, clients=n, processes=min(args.processes, n), **common)
        )
    for rate in rates:
        points.append(open_loop(cfg, stream, inputs, rate=rate, processes=args.processes, **common))
    print(format_table(points))
    for note in notes(points):
        print(f"note: {note}")
    meta = _meta(args, cfg, info, kind, len(inputs))
    if args.json:
        write_json(args.json, points, meta)
        print(f"wrote {args.json}")
    if args.plot:
        workers = f"{cfg.params.workers} worker{'s' * (cfg.params.workers != 1)}"
        title = f"{stream}: batch {cfg.params.batch_size}, {workers}, {kind} inputs"
        write_plot(args.plot, points, title)
        print(f"wrote {args.plot}")
    problems = failed(points)
    for problem in problems:
        print(f"zoo-serve bench: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _levels(option: str, text: str | None, kind: Callable[[str], T]) -> list[T]:
    """``"1,8,32"`` -> ``[1, 8, 32]``, every value above 0."""
    if text is None:
        return []
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        what = "whole numbers like 1,8,32" if kind is int else "numbers like 500,1000"
        raise ConfigError(
            f"{option}: expected comma-separated {what}, got {text!r}", key=option, value=text
        ) from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{option}: every value must be above 0, got {text!r}", key=option)
    return values


def _check(args: argparse.Namespace) -> None:
    for option, value in (("--duration", args.duration), ("--timeout", args.timeout)):
        if not value > 0:
            raise ConfigError(f"{option}: expected seconds above 0, got {value}", key=option)
    if args.warmup < 0:
        raise ConfigError(f"--warmup: expected seconds, 0 or more, got {args.warmup}")
    if args.processes < 1:
        raise ConfigError(f"--processes: expected 1 or more, got {args.processes}")
    if args.image and args.npy:
        raise ConfigError("--image and --npy: give one kind of input, not both")


def _inputs(
    args: argparse.Namespace, cfg: Config, info: dict[str, Any] | None
) -> tuple[Sequence[dict[str, Any]], str]:
    if args.image:
        return image_inputs(args.image, info), "image"
    if args.npy:
        return npy_inputs(args.npy, info), "npy"
    return random_inputs(info, cfg.data.shape), "random"


def _meta(
    args: argparse.Namespace, cfg: Config, info: dict[str, Any] | None, kind: str, count: int
) -> dict[str, Any]:
    from .._version import __version__
    from ..broker.connection import redis_url, safe_url

    params = cfg.params
    return {
        "zoo_serving": __version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "stream": cfg.data.stream,
        "model_name": getattr(args, "model", None),
        "url": safe_url(redis_url(cfg.data)),
        "model": info,
        "config": {
            "batch_size": params.batch_size,
            "max_wait_ms": params.max_wait_ms,
            "workers": params.workers,
            "runner": params.runner,
            "top_n": params.top_n,
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "processes": args.processes,
            "timeout_s": args.timeout,
            "inputs": kind,
            "records_cycled": count,
        },
    }
