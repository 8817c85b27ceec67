"""``zoo-serve models list|load|unload``: the models of a running server's repository, and
loading or unloading one (``repository.control: explicit``), through its Redis."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..broker.connection import connect
from ..errors import ConfigError
from ..repository.api import ModelInfo, Models
from .common import EXIT_OK, load


def cmd_models(args: argparse.Namespace) -> int:
    cfg = load(args)
    client = connect(cfg.data, socket_timeout=max(args.wait, 5.0) + 5.0)
    try:
        models = Models(client, cfg.data.stream)
        if args.action == "list":
            return _print(models.describe(), args.json)
        if not args.name:
            raise ConfigError(f"zoo-serve models {args.action}: name the model", key="name")
        if args.action == "load":
            versions = _versions(args.versions)
            info = models.load(args.name, versions, wait_s=args.wait or None)
        else:
            info = models.unload(args.name, wait_s=args.wait or None)
    finally:
        client.close()
    state = info.state if args.wait else f"asked ({'load' if args.action == 'load' else 'unload'})"
    print(f"zoo-serve: model {info.name}: {state}")
    return EXIT_OK


def _versions(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--versions: expected comma-separated version numbers like 1,3, got {text!r}",
            key="--versions",
            value=text,
        ) from None


def _print(infos: list[ModelInfo], as_json: bool) -> int:
    if as_json:
        print(json.dumps([i.to_dict() for i in infos]))
        return EXIT_OK
    if not infos:
        print("zoo-serve: no model index on this stream (is the server started?)")
        return EXIT_OK
    for info in infos:
        mark = " (default)" if info.default else ""
        wanted = "wanted" if info.wanted else "not wanted"
        print(
            f"{info.name}{mark}: {info.state}, {wanted}; versions {info.versions or '-'} "
            f"({info.policy}); stream {info.stream}"
        )
        for worker, state in info.workers.items():
            print(f"  worker {worker}: {_worker_line(state)}")
        for what, why in info.problems.items():
            print(f"  problem {what}: {why}")
    return EXIT_OK


def _worker_line(state: dict[str, Any]) -> str:
    line = f"{state.get('state')}, versions {state.get('versions') or '-'}"
    if state.get("current") is not None:
        line += f" (serving {state['current']})"
    if state.get("memory"):
        line += f", {state['memory'] / 2**20:.0f} MB"
    if state.get("evictions"):
        line += f", evicted {state['evictions']}x"
    if state.get("error"):
        line += f"; error: {state['error']}"
    return line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "load", "unload"), help="what to do")
    p.add_argument("name", nargs="?", help="the model (load, unload)")
    p.add_argument("--versions", help="load: these versions, like 1,3 (default: its policy)")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait until every worker holds (or dropped) it; 0: do not wait",
    )
    p.add_argument("--json", action="store_true", help="list: print JSON")
