"""What both client classes share: the Redis connection, readiness, waiting for results
(blocking, bounded by a total timeout), and turning user inputs into record inputs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..broker.connection import connect
from ..broker.control import ModelControl
from ..broker.presence import Presence
from ..config import Config, DataConfig, load_config
from ..errors import ServerError, ZooServingError
from ..wire.native import ResultValue, decode_result

DEFAULT_INPUT = "t"  # input name used when predict() gets a bare array or image
_WINDOW = 128  # result keys looked at per round trip when waiting for many


class RedisUser:
    """The Redis connection, readiness and result waiting :class:`InputQueue` and
    :class:`OutputQueue` share; see :class:`InputQueue` for the arguments."""

    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        name: str | None = None,
        *,
        url: str | None = None,
        config: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
        password: str | None = None,
        model: str | None = None,
        version: int | None = None,
        **redis_options: Any,
    ) -> None:
        data = data_config(config)
        if password is not None:
            data = DataConfig(**{**_fields(data), "password": password})
        if url is None and (host is not None or port is not None):
            url = f"redis://{host or 'localhost'}:{port or 6379}"
        self.stream = name or data.stream
        self.result_ttl_s = data.result_ttl_s
        self.data, self.url = data, url
        # blocking waits are bounded by their own timeouts; a socket timeout under them
        # would cut a long BLPOP short
        redis_options.setdefault("socket_timeout", None)
        redis_options.setdefault("socket_connect_timeout", 5.0)
        self.db = connect(data, url=url, **redis_options)
        self.model = model
        self.version = version
        if model is not None:
            self.stream = model_stream(self.db, self.stream, model)
        self.presence = Presence(self.db, self.stream)

    def close(self) -> None:
        """Close the connection pool."""
        self.db.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_ready(self) -> bool:
        """True while at least one worker has its model loaded and warmed up."""
        return self.presence.is_ready()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait up to ``timeout`` seconds for a ready worker; True when there is one."""
        return self.presence.wait_ready(timeout)

    # results ------------------------------------------------------------------

    def _pop(self, key: bytes, timeout: float | None) -> ResultValue | None:
        if timeout is None:
            blob = self.db.lpop(key)
        else:
            reply = self.db.blpop([key], timeout=max(timeout, 0.001))
            blob = reply[1] if reply else None
        return None if blob is None else decode_result(blob)

    def _pop_many(self, wanted: list[bytes], timeout: float) -> dict[bytes, ResultValue]:
        """Block until every result key has its result or ``timeout`` seconds have passed in
        total; results by key.

        Results arrive roughly in the order records were sent, so this works on a window of
        the oldest missing keys: take whatever of the window is there in one pipelined round
        trip, and when nothing is, block (BLPOP) on the window until something arrives.
        """
        out: dict[bytes, ResultValue] = {}
        deadline = time.monotonic() + timeout
        waiting = list(wanted)
        while waiting:
            window = waiting[:_WINDOW]
            pipe = self.db.pipeline(transaction=False)
            for key in window:
                pipe.lpop(key)
            got = {k: b for k, b in zip(window, pipe.execute()) if b is not None}
            if not got:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                reply = self.db.blpop(window, timeout=max(remaining, 0.001))
                if reply is None:
                    break
                got = {reply[0]: reply[1]}
            for key, blob in got.items():
                out[key] = decode_result(blob)
            waiting = [k for k in window if k not in got] + waiting[len(window) :]
        return out


def _fields(data: DataConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}


def data_config(config: Any) -> DataConfig:
    if config is None:
        return DataConfig()
    if isinstance(config, Mapping) and "model" not in config:
        config = {**config, "model": {"path": "-"}}  # the client needs no model
    return load_config(config).data


def as_input(value: Any) -> np.ndarray | bytes:
    """ndarray -> tensor; bytes -> image; str / Path -> the image file's bytes."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        return Path(value).read_bytes()
    raise TypeError(
        f"expected a numpy array (tensor), bytes (encoded image) or an image path, "
        f"got {type(value).__name__}"
    )


def named(inputs: Any) -> dict[str, np.ndarray | bytes]:
    if isinstance(inputs, Mapping):
        return {str(k): as_input(v) for k, v in inputs.items()}
    return {DEFAULT_INPUT: as_input(inputs)}


def result_or_raise(result: ResultValue) -> Any:
    if isinstance(result, ZooServingError):
        raise result
    return result


def model_stream(db: Any, base: str, model: str) -> str:
    """The stream of ``model`` on the server whose ``data.stream`` is ``base``, from the model
    index it publishes.

    Raises:
        ServerError: no server published its models on ``base``, or it has no such model.
    """
    index = ModelControl(db, base).index()
    if not index:
        raise ServerError(
            f"no server has published its models on stream {base!r}: start it first (or check "
            "data.stream / name=)",
            stream=base,
        )
    entry = index.get(model)
    if entry is None:
        raise ServerError(
            f"the server on stream {base!r} has no model {model!r}; it has "
            f"{', '.join(sorted(index))}",
            stream=base,
            model=model,
        )
    return str(entry["stream"])
