"""Whether the Redis user may run what a worker needs, checked once at start.

A user without, say, ``EVALSHA`` would otherwise start, read records, run the model, and then
fail every result write. Each command the worker sends (directly or inside its scripts) is
queued, with the keys it uses, inside ``MULTI`` and thrown away with ``DISCARD``: Redis checks
ACL permissions when it queues a command, so this runs nothing and changes nothing, and a
``NOPERM`` names exactly what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .. import keys
from ..errors import BrokerPermissionError

log = logging.getLogger("zoo_serving.queue")

_ID = "0-1"  # an entry id that is never pending: nothing a probe names exists


def worker_commands(
    stream: str, group: str, consumer: str, scripts: Sequence[tuple[str, str]]
) -> list[tuple[str, ...]]:
    """Every command a worker of ``stream`` sends, with the keys it sends it with; ``scripts``
    are (SHA1, source) of its Lua scripts."""
    result = keys.result(stream, "zs-access-check").decode()
    finished = keys.finished(stream)
    workers = keys.workers(stream)
    ready = keys.ready(stream)
    commands: list[tuple[str, ...]] = [
        ("XGROUP", "CREATE", stream, group, "0", "MKSTREAM"),
        ("XREADGROUP", "GROUP", group, consumer, "COUNT", "1", "STREAMS", stream, ">"),
        ("XPENDING", stream, group, "IDLE", "1", "-", "+", "1"),
        ("XCLAIM", stream, group, consumer, "0", _ID, "JUSTID"),
        ("XACK", stream, group, _ID),
        ("XDEL", stream, _ID),
        ("XADD", keys.dead_letter(stream), "*", "zs_reason", "access check"),
        ("DEL", result),
        ("RPUSH", result, "x"),
        # private results (predict, HTTP) and the claim a uri holds while its record is out
        ("RPUSH", keys.reply(stream, "zs-access-check").decode(), "x"),
        ("PEXPIRE", keys.reply(stream, "zs-access-check").decode(), "1"),
        ("RPUSH", keys.inbox(stream, "zs-access-check").decode(), "x"),
        ("PEXPIRE", keys.inbox(stream, "zs-access-check").decode(), "1"),
        ("GET", keys.uri_claim(stream, "zs-access-check").decode()),
        ("DEL", keys.uri_claim(stream, "zs-access-check").decode()),
        ("RPUSH", finished, "x"),
        ("LTRIM", finished, "0", "0"),
        ("PEXPIRE", result, "1"),
        ("PEXPIRE", finished, "1"),
        ("SET", keys.max_len(stream), "1"),
        ("DEL", keys.max_len(stream)),
        ("SET", ready, consumer, "PX", "1"),
        ("GET", ready),
        ("DEL", ready),
        ("HSET", workers, consumer, "{}"),
        ("HGETALL", workers),
        ("HDEL", workers, consumer),
        ("SET", keys.model(stream), "{}"),
        ("GET", keys.control(stream)),
    ]
    for sha, source in scripts:
        commands.append(("SCRIPT", "LOAD", source))
        commands.append(("EVALSHA", sha, "2", stream, finished))
    return commands


def server_commands(stream: str) -> list[tuple[str, ...]]:
    """What a server sends on its own, before any worker: its claim on ``stream``."""
    servers = keys.servers(stream)
    return [
        ("EVAL", "return 0", "1", servers),
        ("HGETALL", servers),
        ("HDEL", servers, "zs-access-check"),
    ]


def check_access(client: Any, commands: Sequence[tuple[str, ...]]) -> None:
    """Raise :class:`BrokerPermissionError` naming every command (or key) of ``commands``
    the client's Redis user may not use, and the ACL rules that would allow them."""
    import redis

    from .connection import is_cluster

    if is_cluster(client):  # every command names keys of one stream: one slot, one node
        client = client.get_redis_connection(client.get_node_from_key(_key(commands[0])))
    pool = client.connection_pool
    conn = pool.get_connection()
    denied: list[tuple[tuple[str, ...], str]] = []
    try:
        conn.send_command("MULTI")
        conn.read_response()
        for command in commands:
            conn.send_command(*command)
            try:
                conn.read_response()
            except redis.exceptions.NoPermissionError as exc:
                denied.append((command, str(exc)))
            except redis.exceptions.ResponseError as exc:  # not a permission: it runs later
                log.debug("access check of %s: %s", command[0], exc)
        conn.send_command("DISCARD")
        conn.read_response()
    except redis.exceptions.NoPermissionError as exc:  # MULTI itself: nothing to learn here
        log.warning("could not check the Redis user's permissions: %s", exc)
        conn.disconnect()
        return
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if denied:
        raise BrokerPermissionError(_message(denied, pool.connection_kwargs))


def _message(denied: list[tuple[tuple[str, ...], str]], where: dict[str, Any]) -> str:
    user = where.get("username") or "default"
    place = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    commands: list[str] = []
    keys_: list[str] = []
    grants: list[str] = []
    for command, reason in denied:
        if "key" in reason.lower():
            key = _key(command)
            grant = "~" + (key.split("}", 1)[0] + "}:*" if key.startswith("zs:{") else key)
            if key not in keys_:
                keys_.append(key)
        else:
            named = command[0] in ("SCRIPT", "XGROUP")
            name = " ".join(command[:2]) if named else command[0]
            commands += [name] if name not in commands else []
            grant = "+" + ("|".join(command[:2]) if named else command[0]).lower()
        if grant not in grants:
            grants.append(grant)
    missing = [f"commands {', '.join(commands)}"] if commands else []
    missing += [f"keys {', '.join(keys_)}"] if keys_ else []
    return (
        f"the Redis user {user!r} at {place} may not use what the server needs: "
        f"{'; '.join(missing)} ({denied[0][1]}); allow it, e.g. ACL SETUSER {user} "
        f"{' '.join(grants)}"
    )


def _key(command: tuple[str, ...]) -> str:
    """The first key ``command`` names."""
    if command[0] == "XREADGROUP":
        return command[-2]
    if command[0] == "XGROUP":
        return command[2]
    if command[0] in ("EVALSHA", "EVAL"):
        return command[3]
    return command[1]
