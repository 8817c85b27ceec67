"""``zoo-serve status``: ready or not, the server of this work directory, and the stream's
workers, counts and throughput from Redis; exit 0 only when ready. When Redis refuses the
stream's counts, the error is shown in their place (``stream_error`` in ``--json``)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..broker.partitions import stream_stats
from ..broker.presence import Presence
from ..errors import QueueError, ZooServingError
from ..observe.stats import last_minute_rate
from ..repository.api import Models
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
            try:
                status.update(stream_stats(workers.redis, cfg.data.stream, cfg.data.group))
            except QueueError as exc:  # the error, not zeros that look like an idle stream
                status["stream_error"] = str(exc)
            status["models"] = _models(workers.redis, cfg.data.stream, cfg.data.group)
    except ZooServingError as exc:
        status["redis"] = str(exc)
        return _print_status(status, args)
    workers = status["workers"]
    status["served"] = sum(w.get("succeeded", 0) + w.get("failed", 0) for w in workers)
    status["throughput_1m"] = round(sum(last_minute_rate(w, now) for w in workers), 2)
    return _print_status(status, args)


def _models(redis: Any, base: str, group: str) -> list[dict[str, Any]]:
    """Each model of the server's repository: its state, and its own stream's workers and
    counts (empty for a server without a model index)."""
    out = []
    now = time.time()
    for info in Models(redis, base).describe():
        beats = Presence(redis, info.stream).live_heartbeats()
        entry = {
            "name": info.name,
            "default": info.default,
            "state": info.state,
            "versions": info.versions,
            "serving": sorted(
                {w["current"] for w in info.workers.values() if w.get("current") is not None}
            ),
            "stream": info.stream,
            "ready": any(b.get("ready") for b in beats.values()),
            "workers": len(beats),
            "served": sum(b.get("succeeded", 0) + b.get("failed", 0) for b in beats.values()),
            "throughput_1m": round(sum(last_minute_rate(b, now) for b in beats.values()), 2),
        }
        try:
            entry.update(stream_stats(redis, info.stream, group))
        except QueueError as exc:  # the error, not zeros that look like an idle stream
            entry["stream_error"] = str(exc)
        out.append(entry)
    return out


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
        if "stream_error" in status:
            print(f"  stream counts: {status['stream_error']}")
        else:
            print(
                f"  queued: {status['queued']}  lag: {status['lag']}  "
                f"pending: {status['pending']}  dead letters: {status['dead_letter']}"
            )
        print(
            f"  served: {status['served']} records, "
            f"{status['throughput_1m']} records/s over the last minute"
        )
    for m in status.get("models", []):
        mark = " (default)" if m["default"] else ""
        counts = (
            f"stream counts: {m['stream_error']}"
            if "stream_error" in m
            else f"queued {m['queued']}, lag {m['lag']}, pending {m['pending']}"
        )
        print(
            f"  model {m['name']}{mark}: {m['state']}, serving {m['serving'] or '-'} of "
            f"{m['versions'] or '-'}; {m['workers']} worker(s); {counts}; "
            f"{m['throughput_1m']} records/s"
        )
    for w in status["workers"]:
        print(
            f"  worker {w['name']} on {w['host']} pid {w['pid']}: "
            f"{'ready' if w['ready'] else 'loading'}, {w['succeeded']} ok, {w['failed']} failed"
        )
    return code
