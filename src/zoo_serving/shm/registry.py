"""Who holds which shared memory region, in Redis: the hash ``keys.shm_regions(stream)``, one
field per region, its value a lease ``{"host", "pid", "uid", "bytes", "lease_s", "ts"}`` the
client renews every second or so. A worker maps only regions registered from its own host,
and sweeps those whose lease lapsed or whose process is gone: it unlinks their files and
forgets them, so a client that dies leaves nothing behind for long."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from .. import keys, procs
from ..errors import ZooServingError
from .region import DIR, NAME, check_owner

log = logging.getLogger(__name__)

# KEYS: the regions hash. ARGV: a region, the lease read. Drops the field if it still holds
# that lease (its client did not renew it meanwhile); returns 1 if it did.
_FORGET_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
LEASE_S = 10.0  # a region whose client has not renewed it for this long is freed
RENEW_S = 1.0  # how often a client renews its regions


def lease(nbytes: int, lease_s: float = LEASE_S) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "bytes": nbytes,
        "lease_s": lease_s,
        "ts": time.time(),
    }


def register(client: Any, stream: str, name: str, body: dict[str, Any]) -> None:
    """Register (or renew) region ``name`` with its lease ``body``."""
    client.hset(keys.shm_regions(stream), name, json.dumps({**body, "ts": time.time()}))


def unregister(client: Any, stream: str, name: str) -> None:
    client.hdel(keys.shm_regions(stream), name)


def registered(client: Any, stream: str, name: str) -> dict[str, Any] | None:
    """The lease of region ``name``, if it is registered and alive from this host."""
    raw = client.hget(keys.shm_regions(stream), name)
    body = _body(raw)
    if body is None or body.get("host") != socket.gethostname() or _lapsed(body, time.time()):
        return None
    return body


def sweep(client: Any, stream: str, directory: Path = DIR) -> list[str]:
    """Free the regions of this host whose lease lapsed or whose client's process is gone:
    unlink their files (of this user only) and forget them. Returns their names."""
    host, now = socket.gethostname(), time.time()
    freed = []
    for field, raw in client.hgetall(keys.shm_regions(stream)).items():
        name = field.decode("utf-8", "replace")
        body = _body(raw)
        if body is not None and body.get("host") != host:
            continue  # another host's: its own workers sweep it
        gone = body is None or _lapsed(body, now) or not procs.alive(int(body.get("pid") or 0))
        if not gone:
            continue
        # forget it only if the client did not renew it meanwhile
        if client.eval(_FORGET_LUA, 1, keys.shm_regions(stream), name, raw):
            _unlink(name, directory)
            freed.append(name)
            log.info("shared memory region %s freed: its client went away", name)
    return freed


def _unlink(name: str, directory: Path) -> None:
    """Remove a region's file, if it is a region of this user."""
    if not NAME.fullmatch(name):
        return
    path = directory / name
    try:
        check_owner(name, os.lstat(path))
    except (OSError, ZooServingError):  # gone already, or not ours to remove
        return
    path.unlink(missing_ok=True)


def _body(raw: Any) -> dict[str, Any] | None:
    try:
        body = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _lapsed(body: dict[str, Any], now: float) -> bool:
    return now - float(body.get("ts", 0)) > float(body.get("lease_s", LEASE_S))
