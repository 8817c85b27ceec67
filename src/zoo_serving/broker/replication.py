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

from .connection import is_cluster, is_cluster_async

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
    """:func:`call_replicated` on a ``redis.asyncio`` client: of one Redis, of a Sentinel's
    master, or of a Redis Cluster (then the two go down one connection of the node of the
    script's first key, as one pipeline)."""
    if replicas <= 0:
        return await script(keys=keys_, args=args), replicas
    import redis

    cluster = is_cluster_async(client)
    if cluster:
        await client.initialize()  # the slot map, before a node can be picked
    redirected = (redis.exceptions.MovedError, redis.exceptions.AskError)
    loaded = False
    for attempt in range(REDIRECTS + 1):
        node: Any = client.get_node_from_key(keys_[0]) if cluster else None
        try:
            if node is not None:
                reply, acked = await _node_pipeline(node, script, keys_, args, replicas, timeout_ms)
            else:
                pipe = client.pipeline(transaction=False)
                pipe.evalsha(script.sha, len(keys_), *keys_, *args)
                pipe.execute_command("WAIT", replicas, timeout_ms)
                reply, acked = await pipe.execute()
            return reply, int(acked)
        except redis.exceptions.NoScriptError:
            if loaded:  # loaded a moment ago: something else is wrong, say so
                raise
            # a new master (failover) or a node not used yet knows no scripts
            where = client if node is None else node
            await where.execute_command("SCRIPT", "LOAD", script.script)
            loaded = True
        except redirected:
            if not cluster or attempt == REDIRECTS:
                raise
            await client.nodes_manager.initialize()  # the slot moved: learn where to
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError) as exc:
            await _lost_master_async(client, node, exc)
    raise AssertionError("unreachable")


async def _lost_master_async(client: Any, node: Any, exc: Exception) -> None:
    """Raise ``exc`` after what a lost or demoted master asks of ``client``: a lost cluster
    node, the slot map learnt again before the caller retries; a master demoted by a failover
    ("replica" errors, as in :func:`call_replicated`), its connections dropped (Sentinel's
    pool asks the sentinels for the master again) and a ConnectionError for the caller to
    retry."""
    import redis

    if not isinstance(exc, redis.exceptions.ConnectionError) and "replica" not in str(exc):
        raise exc
    if node is not None:
        if not isinstance(exc, redis.exceptions.ConnectionError):
            await node.disconnect()
        await client.nodes_manager.initialize()
    elif not isinstance(exc, redis.exceptions.ConnectionError):
        await client.connection_pool.disconnect()
    if isinstance(exc, redis.exceptions.ConnectionError):
        raise exc
    raise redis.exceptions.ConnectionError(f"talking to a replica: {exc}") from exc


async def _node_pipeline(
    node: Any,
    script: Any,
    keys_: Sequence[Any],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, Any]:
    """EVALSHA then WAIT down one connection of a ``redis.asyncio`` cluster node (its
    pipeline: the asyncio cluster client's own pipeline sends a keyless WAIT to any node)."""
    from redis.asyncio.cluster import PipelineCommand

    commands = [
        PipelineCommand(0, "EVALSHA", script.sha, len(keys_), *keys_, *args),
        PipelineCommand(1, "WAIT", replicas, timeout_ms),
    ]
    await node.execute_pipeline(commands)
    for command in commands:
        if isinstance(command.result, Exception):
            raise command.result
    return commands[0].result, commands[1].result


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
