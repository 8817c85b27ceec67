"""``zoo-serve status``: ready or not, the server of this work directory, and the stream's
workers, counts and throughput from Redis; exit 0 only when ready."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..broker.streams import stream_stats
from ..errors import ZooServingError
from ..observe.stats import last_minute_rate
from .common import EXIT_NOT_READY, EXIT_OK, load, presence, read_server


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)
    pid, _note = read_server(cfg.work_dir)
    status: dict[str, Any] = {"stream": cfg.data.stream, "pid": pid, "ready": False, "workers": []}
    try:
        with presence(cfg) as workers:
            now = time.time()
            # live workers only: a worker of this host whose process died is gone at once,
            # not when its heartbeat or the ready key age out
            beats = workers.live_heartbeats()
            status["ready"] = any(beat.get("ready") for beat in beats.values())
            status["workers"] = [{"name": name, **beat} for name, beat in beats.items()]
            status.update(stream_stats(workers.redis, cfg.data.stream, cfg.data.group))
    except ZooServingError as exc:
        status["redis"] = str(exc)
        return _print_status(status, args)
    workers = status["workers"]
    status["served"] = sum(w.get("succeeded", 0) + w.get("failed", 0) for w in workers)
    status["throughput_1m"] = round(sum(last_minute_rate(w, now) for w in workers), 2)
    return _print_status(status, args)


def _print_status(status: dict[str, Any], args: argparse.Namespace) -> int:
    code = EXIT_OK if status["ready"] else EXIT_NOT_READY
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
