"""Connections to Redis: ``data.src`` (``host:port`` or a ``redis://``, ``rediss://`` or
``unix://`` URL; ``redis[s]+cluster://h1:p1,h2:p2`` for a Redis Cluster;
``redis[s]+sentinel://h1:p1,h2:p2/master`` for a master found through Sentinel) with its
password, ACL user and TLS files, as one redis-py client (``redis.Redis`` or
``redis.cluster.RedisCluster``); clear errors when Redis does not answer or refuses the login;
and a command packer that sends large tensors from their own buffers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..config import DataConfig
from ..config.checks import CLUSTER_SCHEMES, SENTINEL_SCHEMES, split_nodes
from ..errors import BrokerConnectionError

RECONNECT_TRIES = 10


def redis_url(data: DataConfig, src: str | None = None) -> str:
    """The ``redis://`` URL for ``data.src`` (or ``src``); when neither is set, the embedded
    default's address, localhost:``data.embedded_port`` (6379)."""
    src = src or data.src or f"localhost:{data.embedded_port}"
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
    if target.startswith(("rediss://", "rediss+")):
        options.update(_tls_files(data))
    if zero_copy:
        options["command_packer"] = ViewPacker()
    options.update(kwargs)
    if target.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES):
        client = _many_nodes(target, options, retries)
    else:
        client = redis.Redis.from_url(target, **options)
    if check:
        try:
            client.ping()
        except redis.exceptions.AuthenticationError as exc:
            client.close()
            raise BrokerConnectionError(
                f"Redis at {safe_url(target)} refused the login: {exc}; check data.password / "
                "data.username or the URL's credentials",
                url=safe_url(target),
            ) from None
        except redis.exceptions.RedisError as exc:
            client.close()
            raise BrokerConnectionError(
                f"Redis at {safe_url(target)} does not answer: {exc}; {_hint(target, exc)}",
                url=safe_url(target),
            ) from None
    # from now on a Redis restarting is retried (about 6 s with backoff) before raising
    client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
    return client


def _tls_files(data: DataConfig) -> dict[str, str]:
    files = {
        "ssl_ca_certs": data.tls_ca,
        "ssl_certfile": data.tls_cert,
        "ssl_keyfile": data.tls_key,
    }
    return {name: path for name, path in files.items() if path}


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (keys of one command or script must share
    a slot; pipelines are split by node)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _many_nodes(target: str, options: dict[str, Any], retries: int) -> Any:
    """A client for a ``redis[s]+cluster://`` or ``redis[s]+sentinel://`` URL."""
    from urllib.parse import unquote

    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    head, seeds, master = split_nodes(target)
    user, _, password = head.split("://", 1)[1].rstrip("@").partition(":")
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)
    tls = head.startswith("rediss")
    options.pop("command_packer", None)  # redis-py's cluster client takes no packer
    if target.startswith(CLUSTER_SCHEMES):
        from redis.cluster import ClusterNode, RedisCluster

        options.pop("health_check_interval", None)
        options.pop("retry", None)
        # redis-py refreshes the slot map on MOVED and on a lost node, then retries the
        # command (at once, ``retries`` times); callers back off around that for a failover
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            ssl=tls,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            **options,
        )
    from redis.sentinel import Sentinel

    sentinel_options = {
        k: v for k, v in options.items() if k.startswith("socket_") or k.startswith("ssl_")
    }
    if tls:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(seeds, sentinel_kwargs=sentinel_options)
    # the pool asks the sentinels for the master before each new connection, so a failover
    # is followed on the next reconnect
    return sentinel.master_for(master, ssl=tls, **options)


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


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
