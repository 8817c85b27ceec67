"""The producer side of a stream: records go in under the server's bound, each exactly once.

Every add is one Lua call that checks and adds atomically. Its arguments carry, per record, a
sequence number of the producer that sends it (an :class:`InputQueue` in one thread of one
process), and Redis keeps the producer's last added number. redis-py sends a command again
when its connection drops, and it cannot know whether Redis ran it before the drop: a record
whose number is not above the producer's last is one such resend and is not added again.
This is the idempotent producer of Kafka: one small key per producer, not one per record.

The numbers of one producer must reach Redis in order, so a producer belongs to a thread
(two threads of one InputQueue each have their own) and to a process (a forked child gets a
new one).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import keys
from .replication import call_replicated, call_replicated_async

# KEYS: stream, max_len key, producer key, then per record: its uri's claim key and its uri's
#   result key
# ARGV: producer_ttl_ms, claim_ttl_ms, record count, then per record: seq, '1' if its result
#   goes under its uri (else '0': a private reply), field count, fields...
# Goes through the records in order: one numbered at or below the producer's last was added
# by an earlier run of this very call (a resend) and counts as in; any other is added while
# the stream is under the bound. A record answered under its uri also claims the uri (the
# claim holds its entry id; the complete step drops it when it writes the result), and cannot
# go in while the uri is claimed or has a result waiting. Stops at the first record that
# cannot go in: the stream is full ('full'), the uri is in use ('taken'), or Redis refuses
# the XADD (out of memory: maxmemory reached). Returns {records in, why it stopped ('' when
# all are in), stream length, bound}.
_ENQUEUE_LUA = """
local max = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local len = redis.call('XLEN', KEYS[1])
local newest = last
local done, why = 0, ''
local i = 4
for r = 1, tonumber(ARGV[3]) do
  local seq, public, nf = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  if seq > last then
    if max > 0 and len >= max then
      why = 'full'
      break
    end
    local claim, result = KEYS[2 + 2 * r], KEYS[3 + 2 * r]
    if public == '1' and redis.call('EXISTS', claim, result) > 0 then
      why = 'taken'
      break
    end
    local id = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, i + 3, i + 2 + 2 * nf))
    if type(id) == 'table' and id.err then
      why = id.err
      break
    end
    if public == '1' then
      redis.call('SET', claim, id, 'PX', ARGV[2])
    end
    len = len + 1
    newest = seq
  end
  done = r
  i = i + 3 + 2 * nf
end
if newest > last then
  redis.call('SET', KEYS[3], newest, 'PX', ARGV[1])
end
return {done, why, len, max}
"""

# how long Redis remembers a producer's last number after its last add: far longer than
# redis-py goes on resending a command (about 10 tries, a second apart at most)
PRODUCER_TTL_MS = 600_000
# how long a uri stays claimed by a record nobody answers (the complete step drops the claim
# when it writes the result; this only bounds a claim whose record was deleted unanswered)
CLAIM_TTL_MS = 86_400_000
FULL = "full"  # why an add stopped: the stream is at the server's bound
TAKEN = "taken"  # why an add stopped: the record's uri is in use (queued, or a result waits)


@dataclass
class Outgoing:
    """A record on its way in: its stream fields, its uri, whether its result goes under
    that uri (it then claims the uri while it is in use; else its result is a private reply),
    its number (given by :meth:`StreamProducer.number`, just before it is first sent), and
    the partition stream it goes to when not the one its uri picks (a ``predict`` record
    goes to the partition of its sender's inbox)."""

    fields: dict[bytes, Any]
    uri: str
    public: bool = True
    seq: int = 0
    part: str | None = None


@dataclass(frozen=True)
class Added:
    """What one add did: how many records, from the first, are in the stream; why it stopped
    short ('' if it did not, :data:`FULL`, :data:`TAKEN`, or Redis's error, such as ``OOM
    command not allowed ...``); the stream's length after it, and the bound (0: none)."""

    count: int
    why: str
    length: int
    bound: int
    acked: int = 0

    @property
    def out_of_memory(self) -> bool:
        """Redis refused the record: maxmemory is reached."""
        return self.why.startswith("OOM")


class _Numbering:
    """A producer id and its last number."""

    def __init__(self) -> None:
        self.pid = -1
        self.id = ""
        self.seq = 0


class _ThreadNumbering(_Numbering, threading.local):
    """This thread's producer id and its last number."""


class StreamProducer:
    """Adds records to one stream, each at most once, under the bound the server publishes
    (``data.max_queue_len``, :func:`keys.max_len`).

    Args:
        client: a redis-py client, or a ``redis.asyncio`` one (then use :meth:`add_async`).
        stream: the input stream (one partition of it).
        replica_acks, replica_timeout_ms: after each add, WAIT for that many replicas, that
            long at most (``data.replica_acks``, ``data.replica_timeout_ms``).
        shared: one producer for every thread (else one per thread); its caller must then
            number and send from one thread at a time, as a combining sender or an asyncio
            task does.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        replica_acks: int = 0,
        replica_timeout_ms: int = 1000,
        *,
        shared: bool = False,
    ) -> None:
        self.client = client
        self.stream = stream
        self.replica_acks = replica_acks
        self.replica_timeout_ms = replica_timeout_ms
        self._add = client.register_script(_ENQUEUE_LUA)
        self._max_len_key = keys.max_len(stream)
        self._numbering = _Numbering() if shared else _ThreadNumbering()

    def number(self, records: Sequence[Outgoing]) -> str:
        """Give records their numbers, in order, unless they have one; returns the producer
        id. Call it right before the first send: numbers must reach Redis in the order they
        were given."""
        own = self._numbering
        if own.pid != os.getpid():  # a new thread, or a forked child: a producer of its own
            own.pid, own.id, own.seq = os.getpid(), uuid.uuid4().hex, 0
        for record in records:
            if not record.seq:
                own.seq += 1
                record.seq = own.seq
        return own.id

    def add(self, records: Sequence[Outgoing]) -> Added:
        """Add numbered records in order, while the stream is under the bound, in one atomic
        step that a resend cannot repeat."""
        stream_keys, args = self._call(records)
        reply, acked = call_replicated(
            self.client, self._add, stream_keys, args, self.replica_acks, self.replica_timeout_ms
        )
        return _added(reply, acked)

    async def add_async(self, records: Sequence[Outgoing]) -> Added:
        """:meth:`add` on a ``redis.asyncio`` client (replicas waited for on one Redis or a
        Sentinel's master only)."""
        stream_keys, args = self._call(records)
        reply, acked = await call_replicated_async(
            self.client, self._add, stream_keys, args, self.replica_acks, self.replica_timeout_ms
        )
        return _added(reply, acked)

    def _call(self, records: Sequence[Outgoing]) -> tuple[list[Any], list[Any]]:
        producer = self.number(records)
        args: list[Any] = [PRODUCER_TTL_MS, CLAIM_TTL_MS, len(records)]
        stream_keys: list[Any] = [
            self.stream,
            self._max_len_key,
            keys.producer(self.stream, producer),
        ]
        for record in records:
            stream_keys.extend(
                (keys.uri_claim(self.stream, record.uri), keys.result(self.stream, record.uri))
            )
            args.extend((record.seq, "1" if record.public else "0", len(record.fields)))
            for key, value in record.fields.items():
                args.extend((key, value))
        return stream_keys, args


def _added(reply: Any, acked: int = 0) -> Added:
    done, why, length, bound = reply
    if isinstance(why, bytes):
        why = why.decode("utf-8", "replace")
    return Added(int(done), why, int(length), int(bound), acked)
