"""Writes that wait for replicas (``data.replica_acks``): a Lua call and a ``WAIT`` on the
same connection, so ``WAIT`` counts the replicas that have this very write.

Redis replicates asynchronously: a master that dies right after a write can take it with it,
even after its client was told it is in. ``WAIT n timeout`` after the write says how many
replicas have it. In a Redis Cluster the two go in one pipeline to the node of the script's
first key, through that node's own client (redis-py's cluster pipeline refuses EVALSHA); a
node that moved the slot or is gone makes the cluster client refresh its slot map before the
error goes up to the caller, who retries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .connection import is_cluster

REDIRECTS = 5  # MOVED / ASK answers followed per call

# KEYS: stream. ARGV: group, then ids. Acknowledges and deletes entries whose results were
# written beforehand, outside this script: in a Redis Cluster, the result hashes of Analytics
# Zoo and seed-era clients (keys without the stream's hash tag, so in other slots). Returns how
# many acknowledgements were the first.
ACK_LUA = """
local acked = 0
for i = 2, #ARGV do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return acked
"""


def call_replicated(
    client: Any,
    script: Any,
    keys_: Sequence[Any],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """Run registered ``script`` with ``keys_`` and ``args``; with ``replicas`` > 0, then
    ``WAIT replicas timeout_ms``. Returns (the script's reply, replicas that have the write;
    ``replicas`` itself when none were asked for)."""
    if replicas <= 0:
        return script(keys=keys_, args=args), replicas
    import redis

    cluster = is_cluster(client)
    redirected = (redis.exceptions.MovedError, redis.exceptions.AskError)
    loaded = False
    for attempt in range(REDIRECTS + 1):
        node_client = client
        if cluster:
            node_client = client.get_redis_connection(client.get_node_from_key(keys_[0]))
        pipe = node_client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys_), *keys_, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, acked = pipe.execute()
        except redis.exceptions.NoScriptError:
            if loaded:  # loaded a moment ago: something else is wrong, say so
                raise
            node_client.script_load(script.script)  # a new node (failover) knows no scripts
            loaded = True
            continue
        except redirected:
            # the slot moved (a failover, a reshard): learn the new map, send it there
            if not cluster or attempt == REDIRECTS:
                raise
            client.nodes_manager.initialize()
            continue
        except redis.exceptions.ConnectionError:
            if cluster:  # a node gone: learn the new slot map before the caller retries
                client.nodes_manager.initialize()
            raise
        except redis.exceptions.ResponseError as exc:
            if "replica" not in str(exc):
                raise
            # WAIT on a replica: this connection still points at a master demoted by a
            # failover; drop the pool's connections (Sentinel's pool asks the sentinels for
            # the master again) and let the caller retry, as for a lost connection
            node_client.connection_pool.disconnect()
            raise redis.exceptions.ConnectionError(f"talking to a replica: {exc}") from exc
        return reply, int(acked)
    raise AssertionError("unreachable")


async def call_replicated_async(
    client: Any,
    script: Any,
    keys_: Sequence[Any],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """:func:`call_replicated` on a ``redis.asyncio`` client of one Redis or of a Sentinel's
    master (the asyncio cluster client cannot pin a WAIT to the node the script ran on)."""
    if replicas <= 0:
        return await script(keys=keys_, args=args), replicas
    import redis

    loaded = False
    while True:
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys_), *keys_, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, acked = await pipe.execute()
            return reply, int(acked)
        except redis.exceptions.NoScriptError:
            if loaded:  # loaded a moment ago: something else is wrong, say so
                raise
            await client.script_load(script.script)  # a new master knows no scripts
            loaded = True
        except redis.exceptions.ResponseError as exc:
            if "replica" not in str(exc):
                raise
            # as in call_replicated: a master demoted by a failover; reconnect, let the
            # caller retry
            await client.connection_pool.disconnect()
            raise redis.exceptions.ConnectionError(f"talking to a replica: {exc}") from exc


def write_then_ack(
    client: Any,
    ack_script: Any,
    stream: str,
    group: str,
    results: Sequence[tuple[bytes, bytes, bytes]],
    ttl_ms: int,
    replication: tuple[int, int],
) -> tuple[Any, int]:
    """Write ``(entry id, hash key, value)`` results (a hash's ``value`` field, with a TTL)
    to keys of any slot, then acknowledge and delete their entries (:data:`ACK_LUA`, run as
    :func:`call_replicated` with ``replication`` = (replicas, timeout_ms))."""
    pipe = client.pipeline(transaction=False)
    for _eid, key, value in results:
        pipe.hset(key, "value", value)
        pipe.pexpire(key, ttl_ms)
    pipe.execute()
    args = [group, *(eid for eid, _key, _value in results)]
    return call_replicated(client, ack_script, [stream], args, *replication)
