"""Counting a stream: what ``zoo-serve status``, /metrics and the status page show of a
stream's queue (see :func:`.partitions.stream_stats` for a partitioned one)."""

from __future__ import annotations

from typing import Any

from .. import keys
from ..errors import QueueError

#: replies that only mean the stream or its group is not there yet: nothing to count
_NOT_YET = ("NOGROUP", "ERR no such key", "no such key")  # redis-py may drop "ERR "


def one_stream_stats(client: Any, stream: str, group: str) -> dict[str, int]:
    """Queued, lag (not yet delivered), pending (delivered, not answered) and dead-letter
    counts of one stream (one partition; :func:`.partitions.stream_stats` sums them). A
    stream or group that does not exist yet counts 0.

    Raises:
        QueueError: Redis refused a count (a key of another type where the stream or the
            dead-letter stream should be, a command the Redis user may not run), naming the
            command, the key and Redis' error; not zeros that look like an idle stream.
    """
    dead_key = keys.dead_letter(stream)
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xpending(stream, group)
    pipe.xinfo_groups(stream)
    pipe.xlen(dead_key)
    replies = pipe.execute(raise_on_error=False)
    asked = (f"XLEN {stream}", f"XPENDING {stream} {group}", f"XINFO GROUPS {stream}")
    failed = [
        f"{command}: {_redis_error(reply)}"
        for command, reply in zip((*asked, f"XLEN {dead_key}"), replies, strict=True)
        if isinstance(reply, Exception) and not str(reply).startswith(_NOT_YET)
    ]
    if failed:
        hint = ""
        if any("WRONGTYPE" in f for f in failed):
            hint = "; another program holds that key: set data.stream to a name of its own"
        elif any("NOPERM" in f for f in failed):
            hint = "; grant the Redis user those commands on the stream's keys (ACL SETUSER)"
        raise QueueError(
            f"counting stream {stream} failed: {'; '.join(failed)}{hint}", stream=stream
        )
    queued, pending, groups, dead = replies
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


def _redis_error(exc: Exception) -> str:
    """Redis' error as it said it (redis-py takes the NOPERM prefix off its permission error)."""
    text = str(exc)
    if type(exc).__name__ == "NoPermissionError" and not text.startswith("NOPERM"):
        return f"NOPERM {text}"
    return text
