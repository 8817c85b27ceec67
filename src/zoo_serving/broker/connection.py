"""Connections to Redis: ``data.src`` (``host:port`` or a ``redis://``, ``rediss://`` or
``unix://`` URL) with its password, ACL user and TLS files, as one redis-py client; clear errors
when Redis does not answer or refuses the login; and a command packer that sends large tensors
from their own buffers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..config import DataConfig
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

    target, options = _options(data or DataConfig(), url)
    options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), 0)  # the check fails fast
    if zero_copy:
        options["command_packer"] = ViewPacker()
    options.update(kwargs)
    client = redis.Redis.from_url(target, **options)
    if check:
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            client.close()
            raise refused(target, exc) from None
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
    """A ``redis.asyncio`` client for ``data`` or ``url`` (as :func:`connect`), and its URL
    without the password; nothing is sent yet (``await check_async(client, url)`` checks).
    Commands are packed by hiredis where installed (redis.asyncio packs in Python: 3 us an
    argument, most of a client's time on records of 20 arguments each), and memoryview
    arguments go to the socket as they are (:class:`ViewPacker`)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    target, options = _options(data or DataConfig(), url)
    options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    options["connection_class"] = _packing_connection(target)
    options.update(kwargs)
    return redis.asyncio.Redis.from_url(target, **options), safe_url(target)


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


async def check_async(client: Any, where: str) -> None:
    """Ping a ``redis.asyncio`` client.

    Raises:
        BrokerConnectionError: Redis does not answer or refuses the login.
    """
    import redis

    try:
        await client.ping()
    except redis.exceptions.RedisError as exc:
        raise refused(where, exc) from None


def _options(data: DataConfig, url: str | None) -> tuple[str, dict[str, Any]]:
    target = url or redis_url(data)
    options: dict[str, Any] = {"health_check_interval": 30}
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
    return target, options


def refused(target: str, exc: BaseException) -> BrokerConnectionError:
    """The error for a Redis at ``target`` that did not answer ``exc``, or refused the login."""
    import redis

    if isinstance(exc, redis.exceptions.AuthenticationError):
        return BrokerConnectionError(
            f"Redis at {safe_url(target)} refused the login: {exc}; check data.password / "
            "data.username or the URL's credentials",
            url=safe_url(target),
        )
    return BrokerConnectionError(
        f"Redis at {safe_url(target)} does not answer: {exc}; {_hint(target, exc)}",
        url=safe_url(target),
    )


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
