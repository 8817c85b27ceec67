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
    for attempt in (0, 1):
        node_client = client
        if cluster:
            node_client = client.get_redis_connection(client.get_node_from_key(keys_[0]))
        pipe = node_client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys_), *keys_, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, acked = pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt:  # loaded a moment ago: something else is wrong, say so
                raise
            node_client.script_load(script.script)  # a new node (failover) knows no scripts
            continue
        except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
            if cluster:  # MOVED, CLUSTERDOWN, a node gone: learn the new slot map first
                client.nodes_manager.initialize()
            raise
        return reply, int(acked)
    raise AssertionError("unreachable")
