"""What both client classes share: the Redis connection, readiness, waiting for results
(blocking, bounded by a total timeout), and turning user inputs into record inputs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import keys
from ..broker.connection import connect
from ..broker.control import ModelControl
from ..broker.partitions import published_partitions
from ..broker.presence import Presence
from ..config import Config, DataConfig, load_config
from ..config.checks import CLUSTER_SCHEMES, SENTINEL_SCHEMES
from ..errors import ServerError, ZooServingError
from ..wire.native import ResultValue, decode_result

DEFAULT_INPUT = "t"  # input name used when predict() gets a bare array or image
_WINDOW = 128  # result keys looked at per round trip when waiting for many
FAILOVER_S = 30.0  # how long a client of a Redis Cluster or Sentinel rides out a failover


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
        self.partitions = published_partitions(self.db, self.stream, data.partitions)
        self.replica_acks = data.replica_acks
        self.replica_timeout_ms = data.replica_timeout_ms
        src = url or data.src or ""
        # redis-py retries a command on a lost node at once, before a replica can take over
        # (a few seconds): a client of several nodes goes on retrying, backing off, that long
        self._follow_s = FAILOVER_S if src.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES) else 0.0

    def _part(self, uri: str | bytes) -> str:
        """The partition stream of ``uri``'s record (the stream itself when unsplit)."""
        return keys.partition_of(self.stream, uri, self.partitions)

    def _retrying(self, step: Any, deadline: float | None = None) -> Any:
        """``step()``, tried again while a failover is under way (several nodes only) until
        :data:`FAILOVER_S` or ``deadline`` (monotonic) has passed. Only for steps that may be
        sent twice: the idempotent add, reads, pops of results not yet there."""
        import redis.exceptions as rex

        passing = (rex.ConnectionError, rex.TimeoutError, rex.ClusterDownError, rex.TryAgainError)
        give_up = time.monotonic() + self._follow_s
        if deadline is not None:
            give_up = max(min(give_up, deadline), time.monotonic() + 1.0)
        pause = 0.05
        while True:
            try:
                return step()
            except passing:
                if time.monotonic() + pause > give_up or not self._follow_s:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

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
            blob = self._retrying(lambda: self.db.lpop(key))
        else:
            deadline = time.monotonic() + timeout

            def pop() -> Any:
                left = max(deadline - time.monotonic(), 0.001)
                return self.db.blpop([key], timeout=left)

            reply = self._retrying(pop, deadline)
            blob = reply[1] if reply else None
        return None if blob is None else decode_result(blob)

    def _pop_many(self, wanted: list[bytes], timeout: float) -> dict[bytes, ResultValue]:
        """Block until every result key has its result or ``timeout`` seconds have passed in
        total; results by key.

        Results arrive roughly in the order records were sent, so this works on a window of
        the oldest missing keys of one partition (a BLPOP's keys must share a Redis Cluster
        slot): take whatever of the window is there in one pipelined round trip, and when
        nothing is, block (BLPOP) on the window until something arrives.
        """
        out: dict[bytes, ResultValue] = {}
        deadline = time.monotonic() + timeout
        waiting = list(wanted)
        while waiting:
            tag = keys.hash_tag(waiting[0])
            window = [k for k in waiting[: _WINDOW * self.partitions] if keys.hash_tag(k) == tag]
            window = window[:_WINDOW]

            def look(window: list[bytes] = window) -> list[Any]:
                pipe = self.db.pipeline(transaction=False)
                for key in window:
                    pipe.lpop(key)
                return list(pipe.execute())

            got = {k: b for k, b in zip(window, self._retrying(look, deadline)) if b is not None}
            if not got:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break

                def block(window: list[bytes] = window) -> Any:
                    left = max(deadline - time.monotonic(), 0.001)
                    return self.db.blpop(window, timeout=left)

                reply = self._retrying(block, deadline)
                if reply is None:
                    if time.monotonic() < deadline:
                        continue  # a failover cut the wait short
                    break
                got = {reply[0]: reply[1]}
            for key, blob in got.items():
                out[key] = decode_result(blob)
            taken = set(got)
            waiting = [k for k in waiting if k not in taken]
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
