"""The Redis Streams implementation of :class:`~zoo_serving.broker.queue.Queue`, and the
stream's counts (the producer side is :mod:`.producer`).

Workers of one stream share a consumer group; ``read`` is XREADGROUP (own pending entries
first, then new ones, then entries idle too long on a silent consumer via XAUTOCLAIM);
``complete`` is one Lua call per batch that, for each entry, acknowledges it and only if that
acknowledgement is the first writes its result (with a TTL) and deletes the entry from the
stream. The acknowledgement and the result write are one atomic step, so a record is never
acknowledged without its result, and a redelivered record never gets a second result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from .. import keys
from .queue import Completion, Entry, Queue, consumer_name

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.queue")

# KEYS: stream, finished list, then per entry: its result key, its uri's claim key (for 'l';
# the result key again for the others)
# ARGV: group, ttl_ms, finished_max, then (id, value, uri, how) per entry; how is 'l' (native:
# a one-element list, uri added to the finished list, the uri's claim dropped if this entry
# holds it), 'p' (native with reply_to: a one-element list, private to its sender) or 'h'
# (Analytics Zoo and seed-era clients: a hash with the field 'value')
_COMPLETE_LUA = """
local written = 0
local n = (#KEYS - 2) / 2
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local id = ARGV[base + 1]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local key = KEYS[1 + 2 * i]
    redis.call('DEL', key)
    if ARGV[base + 4] == 'h' then
      redis.call('HSET', key, 'value', ARGV[base + 2])
    else
      redis.call('RPUSH', key, ARGV[base + 2])
      if ARGV[base + 4] == 'l' then
        redis.call('RPUSH', KEYS[2], ARGV[base + 3])
        if redis.call('GET', KEYS[2 + 2 * i]) == id then
          redis.call('DEL', KEYS[2 + 2 * i])
        end
      end
    end
    redis.call('PEXPIRE', key, ARGV[2])
    written = written + 1
  end
  redis.call('XDEL', KEYS[1], id)
end
if written > 0 then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return written
"""

FINISHED_MAX = 100_000  # uris remembered for OutputQueue.dequeue
_HOW = {keys.AS_LIST: "l", keys.AS_PRIVATE: "p", keys.AS_HASH: "h"}  # Completion.how -> Lua


class RedisStreamQueue(Queue):
    """A consumer of one Redis stream within its consumer group.

    Args:
        client: a redis-py client (bytes responses).
        stream: the input stream name.
        group: the consumer group.
        consumer: this consumer's name, unique among live workers.
        result_ttl_s: lifetime of result keys.
        claim_idle_ms: entries pending this long on another consumer are taken over.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str = "serving",
        consumer: str | None = None,
        result_ttl_s: int = 3600,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()
        self.result_ttl_ms = result_ttl_s * 1000
        self.claim_idle_ms = claim_idle_ms
        self._own_pending_done = False
        self._next_claim = 0.0
        self._claim_cursor = b"0-0"
        self._complete = client.register_script(_COMPLETE_LUA)
        self._finished_key = keys.finished(stream)

    def setup(self, max_queue_len: int | None = None) -> None:
        """Create the group at the stream's start (so earlier records are served) and publish
        the bound on unprocessed records (0: none) for clients to enforce."""
        import redis

        if max_queue_len is not None:
            if max_queue_len > 0:
                self.client.set(keys.max_len(self.stream), max_queue_len)
            else:
                self.client.delete(keys.max_len(self.stream))
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int) -> list[Entry]:
        if not self._own_pending_done:
            # entries this consumer name read before but never completed (a restart)
            entries = self._xread("0", count, None)
            if len(entries) < count:
                self._own_pending_done = True
            if entries:
                return entries
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(self.claim_idle_ms / 2000.0, 0.05)
            claimed = self._claim(count)
            if claimed:
                return claimed
        return self._xread(">", count, block_ms)

    def _xread(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        try:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            )
        except Exception:
            # Redis may have delivered entries whose reply was lost with the connection: they
            # wait in this consumer's pending list, so read that list again first
            self._own_pending_done = False
            raise
        out: list[Entry] = []
        for _stream, items in reply or []:
            # an entry deleted after delivery comes back as (id, None): nothing left to serve
            out.extend(Entry(eid, fields) for eid, fields in items if fields)
        return out

    def _claim(self, count: int) -> list[Entry]:
        reply = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = reply[0]
        entries = [Entry(eid, fields) for eid, fields in reply[1] if fields]
        if entries:
            pipe = self.client.pipeline(transaction=False)
            for entry in entries:
                pipe.xpending_range(self.stream, self.group, entry.id, entry.id, 1)
            for entry, info in zip(entries, pipe.execute()):
                if info:
                    entry.deliveries = int(info[0]["times_delivered"])
            log.warning(
                "consumer %s took over %d entries idle > %d ms on another consumer",
                self.consumer,
                len(entries),
                self.claim_idle_ms,
            )
        return entries

    def dead_letter(self, entry: Entry, reason: str) -> None:
        fields = dict(entry.fields)
        fields.update(
            {
                b"zs_reason": reason.encode(),
                b"zs_id": entry.id,
                b"zs_deliveries": str(entry.deliveries).encode(),
            }
        )
        self.client.xadd(keys.dead_letter(self.stream), fields)

    def complete(self, done: Sequence[Completion]) -> int:
        if not done:
            return 0
        keys_: list[Any] = [self.stream, self._finished_key]
        args: list[Any] = [self.group, self.result_ttl_ms, FINISHED_MAX]
        for c in done:
            keys_.extend((c.key, c.claim or c.key))
            args.extend((c.entry.id, c.value, c.uri, _HOW[c.how]))
        return int(self._complete(keys=keys_, args=args))

    def pending(self) -> int:
        """Entries delivered to a consumer of the group and not yet completed."""
        info = self.client.xpending(self.stream, self.group)
        return int(info["pending"]) if info else 0

    def close(self) -> None:
        self.client.close()


def stream_stats(client: Any, stream: str, group: str) -> dict[str, int]:
    """Queued, lag (not yet delivered), pending (delivered, not answered) and dead-letter
    counts of a stream; what ``zoo-serve status`` and the Prometheus gauges show."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xpending(stream, group)
    pipe.xinfo_groups(stream)
    pipe.xlen(keys.dead_letter(stream))
    queued, pending, groups, dead = pipe.execute(raise_on_error=False)
    queued = queued if isinstance(queued, int) else 0
    pending = int(pending["pending"]) if isinstance(pending, dict) else 0
    lag = None
    for info in groups if isinstance(groups, list) else []:
        if info.get("name") in (group, group.encode()):
            lag = info.get("lag")  # Redis >= 7; None when it cannot tell
    if lag is None:  # answered entries are deleted, so the stream holds lag + pending
        lag = max(queued - pending, 0)
    return {
        "queued": queued,
        "lag": int(lag),
        "pending": pending,
        "dead_letter": dead if isinstance(dead, int) else 0,
    }
