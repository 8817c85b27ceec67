"""Value checkers of config keys: each takes ``(dotted key, raw value)`` and returns the value
to keep, or raises :class:`~zoo_serving.errors.ConfigError` naming the key, the value and what
is allowed."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

from ..errors import ConfigError

RUNNERS = ("threads", "processes", "spark", "ray")
ENGINES = ("mklblas", "openvino")
BACKENDS = ("onnx", "torch", "tensorflow", "openvino", "caffe", "bigdl")
_TRUE = {"y", "yes", "true", "on", "1"}
_FALSE = {"n", "no", "false", "off", "0"}
_STREAM_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MEMORY_RE = re.compile(r"^\d+[kmgtKMGT]?[bB]?$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
CONTROLS = ("static", "poll", "explicit")  # repository.control
ON_UNLOAD = ("keep", "fail")  # repository.on_unload


# ---------------------------------------------------------------- value checkers


def check_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key}: expected y or n, got {value!r}", key=key, value=value)


def int_checker(minimum: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            )
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            ) from None
        if number < minimum:
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            )
        return number

    return check


def float_checker(minimum: float) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not number >= minimum:
            raise ConfigError(
                f"{key}: expected a number >= {minimum}, got {value!r}", key=key, value=value
            )
        return number

    return check


def choice_checker(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(
                f"{key}: expected one of {', '.join(choices)}, got {value!r}", key=key, value=value
            )
        return text

    return check


def check_backend(key: str, value: Any) -> str:
    """A backend name, or ``package.module:Class`` for a third-party Model."""
    text = str(value).strip()
    if ":" in text and all(part.strip() for part in text.split(":", 1)):
        return text
    return choice_checker(BACKENDS)(key, value)


def check_str(key: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {value!r}", key=key, value=value)
    return str(value)


def check_shape(key: str, value: Any) -> tuple[int, ...]:
    """``3,224,224`` or a YAML list ``[3, 224, 224]`` -> (3, 224, 224); a YAML integer ``1000``
    -> (1000,). Images need three dims (C,H,W); a tensor input may have any number."""
    hint = (
        f"{key}: expected positive integers, comma-separated like 3,224,224, a list like "
        f"[3, 224, 224] or one integer like 1000; got {value!r}"
    )
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    elif isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif isinstance(value, str):
        parts = [p for p in value.replace("[", "").replace("]", "").split(",")]
    else:
        raise ConfigError(hint, key=key, value=value)
    try:
        dims = tuple(int(p.strip()) for p in parts)
    except ValueError:
        raise ConfigError(hint, key=key, value=value) from None
    if not dims or len(dims) > 8 or any(d <= 0 for d in dims):
        raise ConfigError(hint, key=key, value=value)
    return dims


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")  # data.src of a Redis Cluster
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")  # data.src behind Sentinel


def split_nodes(text: str) -> tuple[str, list[tuple[str, int]], str]:
    """``[scheme://][user:password@]host:port,host:port[/name]`` -> (the part before the
    hosts: scheme and credentials, the ``(host, port)`` seeds, the path without its slash).

    Raises:
        ValueError: a seed is not host:port with a port in 1-65535.
    """
    scheme, _, rest = text.partition("://")
    creds, _, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        host, sep, port = seed.strip().rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(seed)
        seeds.append((host.strip("[]"), int(port)))
    head = f"{scheme}://{creds}@" if creds else f"{scheme}://"
    return head, seeds, path.strip()


def check_src(key: str, value: Any) -> str:
    text = str(value).strip()
    if text.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES):
        try:
            _head, _seeds, path = split_nodes(text)
        except ValueError as exc:
            raise ConfigError(
                f"{key}: expected host:port seeds separated by commas like "
                f"redis+cluster://h1:7000,h2:7001 or redis+sentinel://h1:26379,h2:26379/mymaster, "
                f"got {value!r} (bad seed {str(exc)!r})",
                key=key,
                value=value,
            ) from None
        if text.startswith(SENTINEL_SCHEMES) and not path:
            raise ConfigError(
                f"{key}: a redis+sentinel:// URL names the master after the sentinels, like "
                f"redis+sentinel://h1:26379,h2:26379/mymaster, got {value!r}",
                key=key,
                value=value,
            )
        return text
    if text.startswith(("redis://", "rediss://", "unix://")):
        return text
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise ConfigError(
        f"{key}: expected host:port (like localhost:6379), a redis:// or rediss:// URL, "
        f"redis+cluster://h1:port,h2:port (Redis Cluster) or "
        f"redis+sentinel://h1:port,h2:port/master (Sentinel), got {value!r}",
        key=key,
        value=value,
    )


def check_stream(key: str, value: Any) -> str:
    text = str(value).strip()
    if not _STREAM_RE.match(text):
        raise ConfigError(
            f"{key}: expected letters, digits, '_', '.' or '-' only, got {value!r}",
            key=key,
            value=value,
        )
    return text


def check_memory(key: str, value: Any) -> str:
    text = str(value).strip()
    if not _MEMORY_RE.match(text):
        raise ConfigError(
            f"{key}: expected a size like 512m or 4g, got {value!r}", key=key, value=value
        )
    return text


def check_path(key: str, value: Any) -> str:
    text = check_str(key, value).strip()
    if not text:
        raise ConfigError(f"{key}: expected a path, got {value!r}", key=key, value=value)
    return os.path.expanduser(text)


def check_redis_port(key: str, value: Any) -> int:
    """A TCP port a Redis listens on: 1-65535 (no 0 for off)."""
    port = int_checker(1)(key, value)
    if port > 65535:
        raise ConfigError(
            f"{key}: expected a TCP port 1-65535, got {value!r}", key=key, value=value
        )
    return port


def check_port(key: str, value: Any) -> int:
    port = int_checker(0)(key, value)
    if port > 65535:
        raise ConfigError(
            f"{key}: expected a TCP port 1-65535, or 0 for off, got {value!r}", key=key, value=value
        )
    return port


def opt(default: Any, check: Callable[[str, Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


def check_size(key: str, value: Any) -> int:
    """``512m``, ``2g``, ``1.5GiB`` or a number of bytes -> bytes (0: none)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 512m or 2g, got {value!r}", key=key)
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ConfigError(
            f"{key}: expected a size like 512m or 2g (bytes, k, m, g, t), got {value!r}",
            key=key,
            value=value,
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def check_names(key: str, value: Any) -> tuple[str, ...]:
    """Model names: a YAML list or ``a,b``; each one a valid stream-name part."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(check_stream(key, v) for v in items if str(v).strip())
    return names
