"""A stream's workers as Redis sees them: who is serving (heartbeats), whether one is ready,
what model they serve, stop requests, and workers that went silent.

One API for every reader and writer of those keys: the workers themselves, ``zoo-serve
start`` and ``status``, :meth:`InputQueue.wait_ready`, the HTTP front door's readiness,
``zoo-serve bench``, the metrics monitor and the Spark runner. The keys (:mod:`zoo_serving.keys`):

- ``workers``: a hash, worker name -> JSON heartbeat, rewritten every :data:`HEARTBEAT_S`;
- ``ready``: set (to a worker's name) while a worker is ready, renewed with each beat and
  expiring after :data:`HEARTBEAT_TTL_S`, so it lapses when no ready worker is left;
- ``model``: JSON of the served model (backend, inputs, outputs, top_n);
- ``control``: a stop request, ``{"cmd": "stop", "ts": ...}``, for workers started before it;
- ``servers``: a hash, server id -> JSON claim (the model's fingerprint, host, pid, work dir),
  renewed every :data:`HEARTBEAT_S` in Redis time: a server with another model is refused
  while a live claim stands, one with the same model joins.

Example::

    presence = Presence(redis_client, "serving_stream")
    presence.wait_ready(timeout_s=30)
    presence.heartbeats(max_age_s=HEARTBEAT_TTL_S)    # {"host-123-1": {...}, ...}
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .. import keys, procs
from ..config import DataConfig
from .connection import connect

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # how often a worker beats
HEARTBEAT_TTL_S = 5.0  # how long readiness outlives a worker's last beat
STOP_REQUEST_TTL_S = 60  # how long a stop request stays for workers to see

# Claim KEYS[1] (servers hash) for ARGV[1] (server id) with ARGV[2] (JSON, its "model" the
# fingerprint) unless a live claim (ts within ARGV[3] s of Redis time) is for another model;
# drops stale claims; stamps ts. Returns {1 if claimed else 0, {live other claims}}.
_CLAIM_LUA = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local mine = cjson.decode(ARGV[2])
local others, clash = {}, false
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    local ok, other = pcall(cjson.decode, fields[i + 1])
    if ok and type(other) == 'table' and tonumber(other.ts)
        and now - tonumber(other.ts) <= tonumber(ARGV[3]) then
      table.insert(others, fields[i + 1])
      if other.model ~= mine.model then clash = true end
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
end
if clash then return {0, others} end
mine.ts = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(mine))
return {1, others}
"""


class Presence:
    """The presence keys of one stream.

    Args:
        redis: a redis-py client (bytes responses).
        stream: the input stream.
    """

    def __init__(self, redis: Any, stream: str) -> None:
        self.redis = redis
        self.stream = stream

    # ------------------------------------------------------------------ reading

    def is_ready(self) -> bool:
        """True while at least one worker has its model loaded and warmed up."""
        return bool(self.redis.exists(keys.ready(self.stream)))

    def wait_ready(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait up to ``timeout_s`` seconds for a ready worker; True when there is one."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def model(self) -> dict[str, Any] | None:
        """What the workers published about their model (backend, inputs, outputs), or None
        when nothing (or nothing readable) is published."""
        return _model_info(self.redis.get(keys.model(self.stream)))

    async def is_ready_async(self) -> bool:
        """:meth:`is_ready` on a ``redis.asyncio`` client."""
        return bool(await self.redis.exists(keys.ready(self.stream)))

    async def model_async(self) -> dict[str, Any] | None:
        """:meth:`model` on a ``redis.asyncio`` client."""
        return _model_info(await self.redis.get(keys.model(self.stream)))

    def heartbeats(self, *, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """The heartbeats on the stream, by worker name; with ``max_age_s`` only those written
        that recently (a worker that stopped beating is gone). Malformed ones are left out."""
        now = time.time()
        out = {}
        for name, body in self.redis.hgetall(keys.workers(self.stream)).items():
            try:
                beat = json.loads(body)
                age_s = now - float(beat.get("ts", 0))
            except (ValueError, TypeError, AttributeError):
                continue
            if max_age_s is None or age_s <= max_age_s:
                out[name.decode("utf-8", "replace")] = beat
        return out

    def ready_workers(
        self,
        *,
        max_age_s: float | None = None,
        named: str | None = None,
        since: float | None = None,
    ) -> int:
        """How many workers say they are ready (only those whose name holds ``named``, or
        that started at or after ``since``, wall clock)."""
        beats = self.heartbeats(max_age_s=max_age_s)
        return sum(
            1
            for name, beat in beats.items()
            if beat.get("ready")
            and (named is None or named in name)
            and (since is None or float(beat.get("started", 0)) >= since)
        )

    def live_heartbeats(self) -> dict[str, dict[str, Any]]:
        """Heartbeats of workers that are there: written within :data:`HEARTBEAT_TTL_S`, and,
        for a worker on this host, its process still running (a ``kill -9`` shows at once,
        not after the heartbeat ages out)."""
        host = socket.gethostname()
        return {
            name: beat
            for name, beat in self.heartbeats(max_age_s=HEARTBEAT_TTL_S).items()
            if beat.get("host") != host or procs.alive(int(beat.get("pid") or 0))
        }

    # ------------------------------------------------------------------ workers' side

    def announce(
        self, name: str, model: Mapping[str, Any], body: Mapping[str, Any] | None = None
    ) -> None:
        """Publish the model's description and that worker ``name`` is ready, with its first
        heartbeat ``body`` (so whoever sees it ready also sees the worker)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.model(self.stream), json.dumps(model))
        if body is not None:
            pipe.hset(keys.workers(self.stream), name, json.dumps(body))
        pipe.set(keys.ready(self.stream), name, px=int(HEARTBEAT_TTL_S * 1000))
        pipe.execute()

    def beat(self, name: str, body: Mapping[str, Any], ready: bool) -> None:
        """Write worker ``name``'s heartbeat; renew readiness while it is ready, and take it
        back while it is not (a worker stuck in a batch), if it was the one holding it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.workers(self.stream), name, json.dumps(body))
        if ready:
            pipe.set(keys.ready(self.stream), name, px=int(HEARTBEAT_TTL_S * 1000))
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):  # Redis' own error, not the pipeline's dump of
                raise reply  # the command with its whole body
        if not ready:
            self._unready(name)

    def leave(self, name: str) -> None:
        """Take worker ``name``'s heartbeat out, and readiness if it was the one holding it
        (other ready workers set it again within a beat)."""
        self.redis.hdel(keys.workers(self.stream), name)
        self._unready(name)

    def _unready(self, name: str) -> None:
        if self.redis.get(keys.ready(self.stream)) == name.encode():
            self.redis.delete(keys.ready(self.stream))

    # ------------------------------------------------------------------ stopping

    def request_stop(self) -> None:
        """Ask every worker of the stream started before now to drain and stop."""
        body = json.dumps({"cmd": "stop", "ts": time.time()})
        self.redis.set(keys.control(self.stream), body, ex=STOP_REQUEST_TTL_S)

    def stop_requested(self, since: float) -> bool:
        """A stop request written at or after ``since`` (a worker's start, wall clock)."""
        request = self.redis.get(keys.control(self.stream))
        if not request:
            return False
        try:
            body = json.loads(request)
            return body.get("cmd") == "stop" and float(body.get("ts", 0)) >= since
        except (ValueError, AttributeError, TypeError):
            return False

    # ------------------------------------------------------------------ servers

    def claim(self, server_id: str, body: Mapping[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
        """Claim the stream for server ``server_id`` serving ``body["model"]`` (a fingerprint),
        or renew the claim. Returns ``(claimed, other live claims)``: not claimed when a live
        claim is for another model. Atomic, so two servers starting at once cannot both win
        with different models."""
        reply = self.redis.eval(
            _CLAIM_LUA, 1, keys.servers(self.stream), server_id, json.dumps(body), HEARTBEAT_TTL_S
        )
        others = []
        for raw in reply[1] or []:
            try:
                others.append(json.loads(raw))
            except ValueError:
                continue
        return bool(reply[0]), others

    def unclaim(self, server_id: str) -> None:
        """Take server ``server_id``'s claim out (it stopped)."""
        self.redis.hdel(keys.servers(self.stream), server_id)

    # ------------------------------------------------------------------ housekeeping

    def take_lost(self, silent_s: float) -> list[tuple[str, dict[str, Any], float]]:
        """Remove heartbeats silent for over ``silent_s`` seconds; returns ``(name, beat,
        seconds silent)`` of each this caller removed (HDEL answers 1 to one caller only, so
        several monitors report a loss once)."""
        now = time.time()
        lost = []
        for name, beat in self.heartbeats().items():
            silent = now - float(beat.get("ts", 0))
            if silent > silent_s and self.redis.hdel(keys.workers(self.stream), name):
                lost.append((name, beat, silent))
        return lost

    def forget(self, names: Iterable[str]) -> None:
        """Remove the heartbeats of workers known to be gone."""
        names = list(names)
        if names:
            self.redis.hdel(keys.workers(self.stream), *names)


def _model_info(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def request_stop(data: DataConfig) -> bool:
    """Write a stop request for ``data.stream`` (reaches remote workers too); False when Redis
    does not answer."""
    try:
        client = connect(data)
    except Exception:
        return False
    try:
        Presence(client, data.stream).request_stop()
    finally:
        client.close()
    return True
