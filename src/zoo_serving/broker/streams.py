"""The Redis Streams implementation of :class:`~zoo_serving.broker.queue.Queue`, and the
stream's counts (the producer side is :mod:`.producer`).

Workers of one stream share a consumer group; ``read`` is XREADGROUP (own pending entries
first, then new ones, then entries idle too long on a silent consumer, taken over);
``complete`` is one Lua call per batch that, for each entry, acknowledges it and only if that
acknowledgement is the first writes its result (with a TTL) and deletes the entry from the
stream. The acknowledgement and the result write are one atomic step, so a record is never
acknowledged without its result, and a redelivered record never gets a second result.

A consumer remembers the entries it holds (read, not yet completed or released). ``refresh``
resets their idle time (``XCLAIM ... JUSTID``, which counts no delivery), so entries still in
a live worker's pipeline never look idle to others, however long its batches take; and a read
never hands out an entry the consumer already holds.

Idle entries (of a worker that died or gave them up) are taken over one at a time
(``XPENDING ... IDLE`` to find one, ``XCLAIM`` with the same idle time to take it), and not
while the consumer holds one taken over before: such a record runs alone, and if it kills its
worker, the only other records that worker held were first deliveries, so no innocent record
is redelivered again and again alongside a poison one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .. import keys
from .access import check_access, worker_commands
from .queue import Completion, Entry, Queue, consumer_name
from .replication import ACK_LUA, call_replicated, write_then_ack

# the logger name error.log lines carry, as docs/observability.md shows them
log = logging.getLogger("zoo_serving.queue")

# KEYS: stream, finished list, then per entry: its result key, its uri's claim key (for 'l';
# the result key again for the others)
# ARGV: group, ttl_ms, finished_max, then (id, value, uri, how) per entry; how is 'l' (native:
# a one-element list, uri added to the finished list, the uri's claim dropped if this entry
# holds it), 'p' (native with reply_to: a one-element list, private to its sender), 'i'
# (native with an inbox: appended to the sender's inbox list, which holds others' too) or 'h'
# (Analytics Zoo and seed-era clients: a hash with the field 'value')
_COMPLETE_LUA = """
local written = 0
local n = (#KEYS - 2) / 2
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local id = ARGV[base + 1]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local key = KEYS[1 + 2 * i]
    if ARGV[base + 4] ~= 'i' then
      redis.call('DEL', key)
    end
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

# KEYS: stream. ARGV: group, consumer, then ids this consumer holds. Resets the idle time of
# those still pending on this consumer (XCLAIM JUSTID: no delivery counted, nobody else's entry
# taken) and returns the others (taken over by another consumer, or acknowledged).
_REFRESH_LUA = """
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
local lost = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) == 1 then
    claim[#claim + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #claim > 5 then
  claim[#claim + 1] = 'JUSTID'
  redis.call(unpack(claim))
end
return lost
"""

FINISHED_MAX = 100_000  # uris remembered for OutputQueue.dequeue
# Completion.how -> the complete script's code
_HOW = {keys.AS_LIST: "l", keys.AS_PRIVATE: "p", keys.AS_INBOX: "i", keys.AS_HASH: "h"}
REFRESH_CHUNK = 1000  # ids per refresh call (Lua's unpack has a stack limit)
CLAIM_CANDIDATES = 10  # idle entries looked at per take-over (others may take some first)


class RedisStreamQueue(Queue):
    """A consumer of one Redis stream within its consumer group.

    Args:
        client: a redis-py client (bytes responses).
        stream: the input stream name.
        group: the consumer group.
        consumer: this consumer's name, unique among live workers.
        result_ttl_s: lifetime of result keys.
        claim_idle_ms: entries pending this long on another consumer are taken over.
        replica_acks, replica_timeout_ms: after each complete step, WAIT for that many
            replicas (``data.replica_acks``), that long at most.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str = "serving",
        consumer: str | None = None,
        result_ttl_s: int = 3600,
        claim_idle_ms: int = 30_000,
        replica_acks: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        from .connection import is_cluster

        self.client = client
        self.replica_acks = replica_acks
        self.replica_timeout_ms = replica_timeout_ms
        self._cluster = is_cluster(client)
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()
        self.result_ttl_ms = result_ttl_s * 1000
        self.claim_idle_ms = claim_idle_ms
        # where the next read of this consumer's own pending entries starts; None: all read
        self._pending_from: bytes | None = b"0"
        self._next_claim = 0.0
        self._complete = client.register_script(_COMPLETE_LUA)
        self._refresh = client.register_script(_REFRESH_LUA)
        self._ack = client.register_script(ACK_LUA)
        self._finished_key = keys.finished(stream)
        self._held: set[bytes] = set()  # ids read and not yet completed or released
        self._held_again: set[bytes] = set()  # those of them delivered before
        self._held_lock = threading.Lock()
        self._completing: set[bytes] = set()  # ids inside a complete step right now
        self._tag: str | None = None  # what read entries carry as their stream (partitions)

    def check_access(self) -> None:
        scripts = [(self._complete.sha, _COMPLETE_LUA), (self._refresh.sha, _REFRESH_LUA)]
        check_access(self.client, worker_commands(self.stream, self.group, self.consumer, scripts))

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

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        if self._pending_from is not None:
            # entries this consumer name read before and never completed: a lost reply, a
            # restart, or entries it gave up on; those it still holds are in its pipeline
            entries = self._read_own_pending(count)
            if entries:
                return self._hold(entries)
        now = time.monotonic()
        if now >= self._next_claim and not self._held_again:
            claimed = self._claim()
            if claimed:  # more may wait: look again once this one is answered
                return self._hold(claimed)
            self._next_claim = now + max(self.claim_idle_ms / 2000.0, 0.05)
        return self._hold(self._xread(">", count, block_ms))

    def _read_own_pending(self, count: int) -> list[Entry]:
        start = self._pending_from or b"0"
        items = self._xread_items(start, count, None)
        self._pending_from = items[-1][0] if len(items) >= count else None
        with self._held_lock:
            entries = [
                Entry(eid, f, stream=self._tag) for eid, f in items if f and eid not in self._held
            ]
        self._count_deliveries(entries)
        return entries

    def _xread(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        # an entry deleted after delivery comes back as (id, None): nothing left to serve
        return [
            Entry(eid, f, stream=self._tag)
            for eid, f in self._xread_items(start, count, block_ms)
            if f
        ]

    def _xread_items(self, start: Any, count: int, block_ms: int | None) -> list[Any]:
        try:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            )
        except Exception:
            # Redis may have delivered entries whose reply was lost with the connection: they
            # wait in this consumer's pending list, so read that list again first
            self._pending_from = b"0"
            raise
        return [item for _stream, items in reply or [] for item in items]

    def _claim(self) -> list[Entry]:
        """Take over one entry idle past ``claim_idle_ms`` (none when there is none)."""
        idle = self.client.xpending_range(
            self.stream, self.group, "-", "+", CLAIM_CANDIDATES, idle=self.claim_idle_ms
        )
        for row in idle:
            eid = row["message_id"]
            with self._held_lock:  # one of ours whose refresh came late: still in the pipeline
                if eid in self._held:
                    continue
            # the same idle time again: if another consumer took it meanwhile, nothing happens
            taken = self.client.xclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, [eid]
            )
            entries = [
                Entry(i, f, int(row["times_delivered"]) + 1, self._tag) for i, f in taken if f
            ]
            if entries:
                log.warning(
                    "consumer %s took over 1 entry idle > %d ms (from %s, delivered %d times)",
                    self.consumer,
                    self.claim_idle_ms,
                    row["consumer"].decode("utf-8", "replace"),
                    entries[0].deliveries,
                )
                return entries
        return []

    def _count_deliveries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(self.stream, self.group, entry.id, entry.id, 1)
        for entry, info in zip(entries, pipe.execute()):
            if info:
                entry.deliveries = int(info[0]["times_delivered"])

    def _hold(self, entries: list[Entry]) -> list[Entry]:
        with self._held_lock:
            self._held.update(e.id for e in entries)
            self._held_again.update(e.id for e in entries if e.deliveries > 1)
        return entries

    def _drop(self, ids: Iterable[bytes]) -> None:
        ids = set(ids)
        with self._held_lock:
            self._held -= ids
            self._held_again -= ids

    def held_count(self) -> int:
        """Records read and not yet completed or released: in this consumer's pipeline."""
        with self._held_lock:
            return len(self._held)

    def holds(self, entry: Entry) -> bool:
        with self._held_lock:
            return entry.id in self._held

    def release(self, entries: Sequence[Entry]) -> None:
        self._drop(e.id for e in entries)

    def refresh(self) -> list[bytes]:
        with self._held_lock:
            held = sorted(self._held)
        lost: list[bytes] = []
        for start in range(0, len(held), REFRESH_CHUNK):
            chunk = held[start : start + REFRESH_CHUNK]
            lost.extend(self._refresh(keys=[self.stream], args=[self.group, self.consumer, *chunk]))
        with self._held_lock:
            # not lost: completed by this consumer since the snapshot, or being completed
            # (acknowledged, its WAIT still under way)
            lost = [eid for eid in lost if eid in self._held and eid not in self._completing]
        self._drop(lost)
        return lost

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

    def drop(self, entries: Sequence[Entry]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xack(self.stream, self.group, entry.id)
            pipe.xdel(self.stream, entry.id)
        pipe.execute()
        self._drop(e.id for e in entries)

    def complete(self, done: Sequence[Completion]) -> int:
        if not done:
            return 0
        written = 0
        if self._cluster and any(c.how == keys.AS_HASH for c in done):
            written = self._complete_elsewhere([c for c in done if c.how == keys.AS_HASH])
            done = [c for c in done if c.how != keys.AS_HASH]
            if not done:
                return written
        keys_: list[Any] = [self.stream, self._finished_key]
        args: list[Any] = [self.group, self.result_ttl_ms, FINISHED_MAX]
        for c in done:
            claim = c.claim
            if claim is None:  # a listed result's uri claim is this stream's, whoever built it
                claim = keys.uri_claim(self.stream, c.uri) if c.how == keys.AS_LIST else c.key
            keys_.extend((c.key, claim))
            args.extend((c.entry.id, c.value, c.uri, _HOW[c.how]))
        with self._completing_now(c.entry.id for c in done):
            reply, acked = call_replicated(
                self.client, self._complete, keys_, args, self.replica_acks, self.replica_timeout_ms
            )
        self._warn_unreplicated(acked)
        self._drop(c.entry.id for c in done)
        return written + int(reply)

    @contextlib.contextmanager
    def _completing_now(self, ids: Iterable[bytes]) -> Iterator[None]:
        """Ids being completed: a refresh meanwhile finds them acknowledged, which is not a
        take-over (the complete step's WAIT can make that window long)."""
        ids = set(ids)
        with self._held_lock:
            self._completing |= ids
        try:
            yield
        finally:
            with self._held_lock:
                self._completing -= ids

    def _complete_elsewhere(self, done: Sequence[Completion]) -> int:
        """Results whose keys are in another slot of a Redis Cluster (Analytics Zoo and
        seed-era hashes have no hash tag): written first, then their entries acknowledged.
        Two steps, not one: a record redelivered between them writes its (same) result again,
        so such a client may see a result rewritten, never a record acknowledged without
        one."""
        ids = [c.entry.id for c in done]
        with self._completing_now(ids):
            reply, acked = write_then_ack(
                self.client,
                self._ack,
                self.stream,
                self.group,
                [(c.entry.id, c.key, c.value) for c in done],
                self.result_ttl_ms,
                (self.replica_acks, self.replica_timeout_ms),
            )
        self._warn_unreplicated(acked)
        self._drop(ids)
        return int(reply)

    def _warn_unreplicated(self, acked: int) -> None:
        if acked < self.replica_acks:
            log.warning(
                "results on stream %s reached %d replica(s) within %d ms, data.replica_acks is "
                "%d: a failover now may lose them (their records are then served again)",
                self.stream,
                acked,
                self.replica_timeout_ms,
                self.replica_acks,
            )

    def pending(self) -> int:
        """Entries delivered to a consumer of the group and not yet completed."""
        info = self.client.xpending(self.stream, self.group)
        return int(info["pending"]) if info else 0

    def close(self) -> None:
        self.client.close()
