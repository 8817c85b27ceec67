"""The Queue the worker talks to, and its Redis Streams implementation.

The worker knows only :class:`Queue`: read a batch of entries, complete entries with their
results. Another broker (Kafka, say) would be a second implementation; nothing else changes.

Redis Streams mapping: workers of one stream share a consumer group; ``read`` is XREADGROUP
(own pending entries first, then new ones, then entries idle too long on a silent consumer via
XAUTOCLAIM); ``complete`` is one Lua call per batch that, for each entry, acknowledges it and
only if that acknowledgement is the first writes its result (with a TTL) and deletes the entry
from the stream. The acknowledgement and the result write are one atomic step, so a record is
never acknowledged without its result, and a redelivered record never gets a second result.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import urlsplit

from . import keys
from .config import DataConfig
from .errors import BrokerConnectionError
from .protocol_zoo import NATIVE, result_key

log = logging.getLogger(__name__)

DEFAULT_SRC = "localhost:6379"
RECONNECT_TRIES = 10


@dataclass
class Entry:
    """One stream entry as read: its id, its raw fields, and how often it was delivered
    (known for entries taken over from another consumer, else 1)."""

    id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


# a completed entry: (entry, uri, result) or (entry, uri, result, reply protocol)
Done = Union[tuple[Entry, bytes, bytes], tuple[Entry, bytes, bytes, str]]  # noqa: UP007


class Queue(ABC):
    """What the worker needs from a broker."""

    @abstractmethod
    def setup(self, max_queue_len: int | None = None) -> None:
        """Create the stream and consumer group if they do not exist; publish the bound on
        unprocessed records when given (0: none)."""

    @abstractmethod
    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` entries for this consumer, waiting at most ``block_ms`` for one."""

    @abstractmethod
    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Keep a copy of an entry given up on, with the reason, where an operator can see it."""

    @abstractmethod
    def complete(self, done: Sequence[Done]) -> int:
        """Write ``(entry, uri, result[, reply])`` results and acknowledge the entries; returns
        how many results were written (an entry already completed elsewhere is skipped).
        ``reply`` is the record's protocol (:mod:`~zoo_serving.protocol_zoo`), native if absent:
        it says where the result goes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ------------------------------------------------------------------ connections


def redis_url(data: DataConfig, src: str | None = None) -> str:
    """The ``redis://`` URL for ``data.src`` (or ``src``), defaulting to localhost:6379."""
    src = src or data.src or DEFAULT_SRC
    if "://" in src:
        return src
    return f"redis://{src}"


class ViewPacker:
    """Packs Redis commands without copying large arguments given as memoryviews.

    redis-py's hiredis packer copies every argument into one buffer (a memoryview first into
    bytes, so twice); its pure-Python packer hands memoryviews to the socket as they are but
    is slower on small commands. Commands carrying a memoryview take the Python path, all
    others hiredis (where installed).
    """

    def __init__(self) -> None:
        from redis._parsers import Encoder
        from redis.connection import HIREDIS_AVAILABLE, HiredisRespSerializer, PythonRespSerializer

        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
        self._large = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)

    def pack(self, *args: Any) -> list[Any]:
        if self._small is None or any(type(a) is memoryview for a in args):
            return self._large.pack(*args)
        return self._small.pack(*args)


def connect(
    data: DataConfig | None = None,
    *,
    url: str | None = None,
    check: bool = True,
    retries: int = RECONNECT_TRIES,
    zero_copy: bool = False,
    **kwargs: Any,
) -> Any:
    """A redis-py client for ``data`` (URL, password, ACL user, TLS files) or for ``url``.

    ``retries``: how often a command that lost its connection is sent again. Workers pass 0:
    a retried XREADGROUP would hide that the lost reply had already delivered entries.
    ``zero_copy``: send memoryview arguments straight from their buffers (see
    :class:`ViewPacker`); senders of large tensors pass True.

    Raises:
        BrokerConnectionError: with ``check``, when Redis does not answer or refuses the login.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    data = data or DataConfig()
    target = url or redis_url(data)
    options: dict[str, Any] = {
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 0),  # the first check fails fast
    }
    if not target.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only: a unix socket has no keepalive
    if data.password and not urlsplit(target).password:
        options["password"] = data.password
    if data.username and not urlsplit(target).username:
        options["username"] = data.username
    if target.startswith("rediss://"):
        if data.tls_ca:
            options["ssl_ca_certs"] = data.tls_ca
        if data.tls_cert:
            options["ssl_certfile"] = data.tls_cert
        if data.tls_key:
            options["ssl_keyfile"] = data.tls_key
    if zero_copy:
        options["command_packer"] = ViewPacker()
    options.update(kwargs)
    client = redis.Redis.from_url(target, **options)
    if check:
        try:
            client.ping()
        except redis.exceptions.AuthenticationError as exc:
            client.close()
            raise BrokerConnectionError(
                f"Redis at {_safe(target)} refused the login: {exc}; check data.password / "
                "data.username or the URL's credentials",
                url=_safe(target),
            ) from None
        except redis.exceptions.RedisError as exc:
            client.close()
            raise BrokerConnectionError(
                f"Redis at {_safe(target)} does not answer: {exc}; {_hint(target, exc)}",
                url=_safe(target),
            ) from None
    # from now on a Redis restarting is retried (about 6 s with backoff) before raising
    client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
    return client


def _hint(target: str, exc: BaseException) -> str:
    """What to check when Redis does not answer, from the URL's scheme and the socket error."""
    import ssl

    cause = exc.__context__
    if target.startswith("rediss://"):
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "EOF occurred" in str(exc):
            return (
                "the TLS handshake failed: check data.tls_ca (the CA of the server's "
                "certificate) and, when the server requires client certificates, "
                "data.tls_cert and data.tls_key"
            )
        return "if that port speaks plain TCP, use a redis:// URL; else start redis-server"
    if (
        isinstance(cause, (ConnectionResetError, BrokenPipeError))
        or "reset by peer" in str(exc)
        or "closed by server" in str(exc)
    ):
        return (
            "the server dropped the connection: if that port speaks TLS only, use a rediss:// "
            "URL with data.tls_ca"
        )
    return "start redis-server or set data.src"


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def added_at(entry_id: bytes) -> float:
    """When Redis added an entry (wall-clock seconds), read from its stream id.

    The id holds whole milliseconds, cut down from the true time: the middle of that
    millisecond is the unbiased guess (the plain value would add 0.5 ms to every wait).
    """
    try:
        return (int(entry_id.split(b"-", 1)[0]) + 0.5) / 1000.0
    except ValueError:
        return time.time()


def consumer_name(tag: str = "") -> str:
    """A consumer name unique to this process (and ``tag``): host-pid[-tag]."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    return f"{name}-{tag}" if tag else name


# ------------------------------------------------------------------ Redis Streams

# KEYS: stream, finished list, then one result key per entry
# ARGV: group, ttl_ms, finished_max, then (id, value, uri, how) per entry; how is 'l' (native:
# a one-element list, uri added to the finished list) or 'h' (Analytics Zoo and seed-era
# clients: a hash with the field 'value')
_COMPLETE_LUA = """
local written = 0
local n = #KEYS - 2
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local id = ARGV[base + 1]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local key = KEYS[2 + i]
    redis.call('DEL', key)
    if ARGV[base + 4] == 'h' then
      redis.call('HSET', key, 'value', ARGV[base + 2])
    else
      redis.call('RPUSH', key, ARGV[base + 2])
      redis.call('RPUSH', KEYS[2], ARGV[base + 3])
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

    def complete(self, done: Sequence[Done]) -> int:
        if not done:
            return 0
        keys_: list[Any] = [self.stream, self._finished_key]
        args: list[Any] = [self.group, self.result_ttl_ms, FINISHED_MAX]
        for entry, uri, value, *rest in done:
            reply = rest[0] if rest else NATIVE
            keys_.append(result_key(reply, self.stream, uri))
            args.extend((entry.id, value, uri, "l" if reply == NATIVE else "h"))
        return int(self._complete(keys=keys_, args=args))

    def pending(self) -> int:
        """Entries delivered to a consumer of the group and not yet completed."""
        info = self.client.xpending(self.stream, self.group)
        return int(info["pending"]) if info else 0

    def close(self) -> None:
        self.client.close()
