"""Writes that wait for replicas (``data.replica_acks``): a Lua call and a ``WAIT`` on the
same connection, so ``WAIT`` counts the replicas that have this very write.

Redis replicates asynchronously: a master that dies right after a write can take it with it,
even after its client was told it is in. ``WAIT n timeout`` after the write says how many
replicas have it. In a Redis Cluster the two go in one pipeline to the node of the script's
first key (redis-py's cluster pipeline keeps one connection per node)."""

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

    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys_), *keys_, *args)
        if is_cluster(client):
            node = client.get_node_from_key(keys_[0])
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        else:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, acked = pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt:  # loaded a moment ago: something else is wrong, say so
                raise
            client.script_load(script.script)  # a new node (failover) knows no scripts yet
            continue
        return reply, int(acked)
    raise AssertionError("unreachable")
