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
from ..errors import BrokerConnectionError, ConfigError

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
    target, options = _options(data, url)
    options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), 0)  # the check fails fast
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
        except redis.exceptions.RedisError as exc:
            client.close()
            raise _not_connected(data, target, exc) from None
    # from now on a Redis restarting is retried (about 6 s with backoff) before raising
    client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
    return client


def connect_async(
    data: DataConfig | None = None,
    *,
    url: str | None = None,
    retries: int = RECONNECT_TRIES,
    **kwargs: Any,
) -> tuple[Any, str]:
    """A ``redis.asyncio`` client for ``data`` or ``url`` (as :func:`connect`, Redis Cluster
    and Sentinel URLs too), and its URL without the password; nothing is sent yet
    (``await check_async(client, url)`` checks). On one Redis, commands are packed by hiredis
    where installed (redis.asyncio packs in Python: 3 us an argument, most of a client's time
    on records of 20 arguments each), and memoryview arguments go to the socket as they are
    (:class:`ViewPacker`)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    target, options = _options(data or DataConfig(), url)
    options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    options.update(kwargs)
    if target.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES):
        return _many_nodes_async(target, options), safe_url(target)
    options["connection_class"] = _packing_connection(target)
    return redis.asyncio.Redis.from_url(target, **options), safe_url(target)


def _many_nodes_async(target: str, options: dict[str, Any]) -> Any:
    """A ``redis.asyncio`` client for a ``redis[s]+cluster://`` or ``redis[s]+sentinel://``
    URL (redis-py's own packing: its cluster and sentinel connections take no packer)."""
    head, seeds, master = split_nodes(target)
    _credentials(head, options)
    tls = head.startswith("rediss")
    if target.startswith(CLUSTER_SCHEMES):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        options.pop("health_check_interval", None)
        # redis-py refreshes the slot map on MOVED and on a lost node, then retries
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds], ssl=tls, **options
        )
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(seeds, sentinel_kwargs=_sentinel_options(options, tls))
    return sentinel.master_for(master, ssl=tls, **options)


def _sentinel_options(options: dict[str, Any], tls: bool) -> dict[str, Any]:
    """What a connection to a Sentinel takes of a master connection's ``options`` (socket and
    TLS settings), with ``data.sentinel_password`` (taken out of ``options``) as its password."""
    password = options.pop("sentinel_password", None)
    out = {k: v for k, v in options.items() if k.startswith("socket_") or k.startswith("ssl_")}
    if tls:
        out["ssl"] = True
    if password:
        out["password"] = password
    return out


def _packing_connection(target: str) -> type:
    """The redis.asyncio connection class for ``target``'s scheme, packing with
    :class:`ViewPacker`."""
    from redis.asyncio import connection

    base: type = connection.Connection
    if target.startswith("unix://"):
        base = connection.UnixDomainSocketConnection
    elif target.startswith("rediss://"):
        base = connection.SSLConnection
    packer = ViewPacker()

    class Packing(base):
        def pack_command(self, *args: Any) -> list[Any]:
            return packer.pack(*args)

    return Packing


async def close_async(client: Any) -> None:
    """Close a client of :func:`connect_async`, and the connections to the sentinels that
    found its master, if any (closing the client alone leaves those open)."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
        await sentinel.aclose()


async def check_async(client: Any, where: str, data: DataConfig | None = None) -> None:
    """Ping a ``redis.asyncio`` client of ``data`` at ``where``.

    Raises:
        BrokerConnectionError: Redis does not answer or refuses the login.
    """
    import redis

    try:
        await client.ping()
    except redis.exceptions.RedisError as exc:
        raise _not_connected(data or DataConfig(), where, exc) from None


def _options(data: DataConfig, url: str | None) -> tuple[str, dict[str, Any]]:
    """The URL to connect to and redis-py's options for it (sync and asyncio alike)."""
    target = url or redis_url(data)
    options: dict[str, Any] = {"health_check_interval": 30}
    if not target.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only: a unix socket has no keepalive
    if data.password and not urlsplit(target).password:
        options["password"] = data.password
    if data.username and not urlsplit(target).username:
        options["username"] = data.username
    if data.sentinel_password and target.startswith(SENTINEL_SCHEMES):
        options["sentinel_password"] = data.sentinel_password
    if target.startswith(("rediss://", "rediss+")):
        _check_tls_files(data)
        if data.tls_ca:
            options["ssl_ca_certs"] = data.tls_ca
        if data.tls_cert:
            options["ssl_certfile"] = data.tls_cert
        if data.tls_key:
            options["ssl_keyfile"] = data.tls_key
    return target, options


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (keys of one command or script must share
    a slot; pipelines are split by node)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def is_cluster_async(client: Any) -> bool:
    """:func:`is_cluster` for a ``redis.asyncio`` client."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _many_nodes(target: str, options: dict[str, Any], retries: int) -> Any:
    """A client for a ``redis[s]+cluster://`` or ``redis[s]+sentinel://`` URL."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    head, seeds, master = split_nodes(target)
    _credentials(head, options)
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

    sentinel = Sentinel(seeds, sentinel_kwargs=_sentinel_options(options, tls))
    # the pool asks the sentinels for the master before each new connection, so a failover
    # is followed on the next reconnect
    return sentinel.master_for(master, ssl=tls, **options)


def _credentials(head: str, options: dict[str, Any]) -> None:
    """The user and password of a many-node URL's ``scheme://user:password@`` head, if any."""
    from urllib.parse import unquote

    user, _, password = head.split("://", 1)[1].rstrip("@").partition(":")
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)


_TLS_FILES = {
    "tls_ca": "CA certificate",
    "tls_cert": "client certificate",
    "tls_key": "client key",
}


def _check_tls_files(data: DataConfig) -> None:
    """Name a TLS file that is not there or cannot be read before a connection tries it (the
    ssl module says only "No such file or directory", not which file)."""
    for key, what in _TLS_FILES.items():
        path = getattr(data, key)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"data.{key}: cannot read the {what} {path!r}: {exc.strerror or exc}; set "
                f"data.{key} to a PEM file this user can read",
                key=f"data.{key}",
                value=path,
            ) from None


def _tls_hint(data: DataConfig, target: str, exc: BaseException) -> str:
    """What went wrong setting up TLS, from the ssl error, naming the config keys and files
    to check; "" when ``exc`` is no TLS failure."""
    import ssl

    if not target.startswith(("rediss://", "rediss+")):
        return ""
    text = f"{exc} {exc.__context__ or ''}"
    ca = f"data.tls_ca ({data.tls_ca})" if data.tls_ca else "the system's CAs (data.tls_ca unset)"
    cert = f"data.tls_cert ({data.tls_cert})"
    if "KEY_VALUES_MISMATCH" in text:
        return f"data.tls_key ({data.tls_key}) is not the key of {cert}"
    if "NO_CERTIFICATE_OR_CRL_FOUND" in text:
        return f"data.tls_ca ({data.tls_ca}) holds no PEM certificate"
    if "PEM" in text or "NO_START_LINE" in text:
        return f"{cert} and data.tls_key ({data.tls_key}) must be PEM files; one is not"
    if "mismatch" in text and "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the server's certificate does not name the host in data.src; connect by a name "
            "or address the certificate lists"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"the server's certificate is not signed by a CA in {ca}; set data.tls_ca to it"
    if "CERTIFICATE_REQUIRED" in text:
        return (
            "the server requires a client certificate: set data.tls_cert and data.tls_key"
            if not data.tls_cert
            else f"the server requires a client certificate and did not take {cert}"
        )
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "unknown ca" in text:
        return f"the server does not trust {cert}: it must be signed by a CA the server trusts"
    if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "EOF occurred" in text:
        # TLS 1.3 may report a refused (or missing) client certificate as a bare EOF
        clients = (
            "when the server requires client certificates, set data.tls_cert and data.tls_key"
            if not data.tls_cert
            else f"{cert} must be signed by a CA the server trusts"
        )
        return f"check {ca} (the CA of the server's certificate); {clients}"
    return ""


def _not_connected(data: DataConfig, target: str, exc: Exception) -> BrokerConnectionError:
    """The error for a first PING that failed: a refused login, a TLS failure (which file or
    key to check), or no answer (what to check, from the URL's scheme and the socket error)."""
    import redis

    url = safe_url(target)
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return BrokerConnectionError(
            f"Redis at {url} refused the login: {exc}; check data.password / data.username "
            "or the URL's credentials",
            url=url,
        )
    tls = _tls_hint(data, target, exc)
    if tls:
        text = f"{exc} {exc.__context__ or ''}"
        # a file of ours that does not do is found before any byte goes to Redis
        local = any(k in text for k in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE", "PEM"))
        what = "TLS could not be set up" if local else "the TLS handshake failed"
        return BrokerConnectionError(f"Redis at {url}: {what}: {exc}; {tls}", url=url)
    return BrokerConnectionError(
        f"Redis at {url} does not answer: {exc}; {_hint(target, exc)}", url=url
    )


def _hint(target: str, exc: BaseException) -> str:
    """What to check when Redis does not answer, from the URL's scheme and the socket error."""
    cause = exc.__context__
    if target.startswith("rediss://"):
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
