"""The client side: :class:`InputQueue` sends records, :class:`OutputQueue` fetches results.

Shaped like the original Cluster Serving client, so old code ports by changing the import::

    from zoo_serving import InputQueue, OutputQueue

    inq = InputQueue(host="localhost", port=6379)       # or url="redis://...", config="config.yaml"
    inq.enqueue("cat-1", t=np.ones((3, 224, 224), np.float32))
    inq.enqueue("cat-2", image="cat.jpg")               # a path or bytes is an image
    print(OutputQueue().query("cat-1", timeout=5))      # [[class_index, probability], ...]
    print(inq.predict("cat.jpg", timeout=5))            # enqueue and wait, in one call

Results are fetched with blocking Redis calls (BLPOP), never a polling loop; a ``timeout``
bounds the total wait. A failed record raises the :class:`ZooServingError` subclass the server
stored (``predict``, ``query``), or is returned as that error object (``dequeue``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import keys
from .broker.connection import connect
from .broker.presence import Presence
from .broker.producer import FULL, Added, Outgoing, StreamProducer
from .config import Config, DataConfig, load_config
from .errors import QueueError, QueueFullError, ResultTimeoutError, ZooServingError
from .wire import native
from .wire.native import ResultValue, decode_result

__all__ = ["InputQueue", "OutputQueue"]

_DEFAULT_INPUT = "t"  # input name used when predict() gets a bare array or image
_WINDOW = 128  # result keys looked at per round trip when waiting for many
_CHUNK = 64  # most records per round trip in enqueue_many
_CHUNK_BYTES = 4 << 20  # and most payload bytes: the add script copies its arguments, and
# Redis counts them against maxmemory while it holds them


class _RedisUser:
    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        name: str | None = None,
        *,
        url: str | None = None,
        config: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
        password: str | None = None,
        **redis_options: Any,
    ) -> None:
        data = _data_config(config)
        if password is not None:
            data = DataConfig(**{**_fields(data), "password": password})
        if url is None and (host is not None or port is not None):
            url = f"redis://{host or 'localhost'}:{port or 6379}"
        self.stream = name or data.stream
        self.result_ttl_s = data.result_ttl_s
        # blocking waits are bounded by their own timeouts; a socket timeout under them
        # would cut a long BLPOP short
        redis_options.setdefault("socket_timeout", None)
        redis_options.setdefault("socket_connect_timeout", 5.0)
        self.db = connect(data, url=url, **redis_options)
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


def _data_config(config: Any) -> DataConfig:
    if config is None:
        return DataConfig()
    if isinstance(config, Mapping) and "model" not in config:
        config = {**config, "model": {"path": "-"}}  # the client needs no model
    return load_config(config).data


def _as_input(value: Any) -> np.ndarray | bytes:
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


def _named(inputs: Any) -> dict[str, np.ndarray | bytes]:
    if isinstance(inputs, Mapping):
        return {str(k): _as_input(v) for k, v in inputs.items()}
    return {_DEFAULT_INPUT: _as_input(inputs)}


def _value(result: ResultValue) -> Any:
    if isinstance(result, ZooServingError):
        raise result
    return result


class InputQueue(_RedisUser):
    """Sends records to a serving stream.

    Args:
        host, port: Redis address (default localhost:6379).
        name: the input stream (default ``data.stream`` of ``config``, else ``serving_stream``).
        url: a ``redis://`` or ``rediss://`` URL instead of host and port.
        config: a ``config.yaml`` path, mapping or Config: its ``data`` section is used.
        password: Redis password.
        wait_if_full_s: when the stream is at the server's bound, wait up to this long for
            room before raising :class:`QueueFullError` (default: raise at once).
    """

    def __init__(self, *args: Any, wait_if_full_s: float = 0.0, **kwargs: Any) -> None:
        kwargs.setdefault("zero_copy", True)  # tensors go from the arrays to the socket
        super().__init__(*args, **kwargs)
        self.wait_if_full_s = wait_if_full_s
        self._producer = StreamProducer(self.db, self.stream)

    def enqueue(self, uri: str, deadline_s: float | None = None, **inputs: Any) -> str:
        """Send one record: ``enqueue("img-1", image="cat.jpg")`` or ``enqueue("x", t=array)``.

        A record goes in once, even when the connection drops and redis-py sends it again.

        Args:
            uri: the record's id; its result is fetched by it.
            deadline_s: seconds from now after which the server should not bother.
            **inputs: one keyword per model input: an ndarray (tensor), bytes or a path (image).

        Raises:
            QueueFullError: the stream holds as many unprocessed records as the server allows
                (``data.max_queue_len``), or Redis is out of memory (``maxmemory``), still
                after waiting ``wait_if_full_s``.
        """
        self._send([Outgoing(self._fields(uri, inputs, deadline_s), uri)], [])
        return uri

    def enqueue_many(
        self, records: Iterable[tuple[str, Mapping[str, Any]]], deadline_s: float | None = None
    ) -> list[str]:
        """Send ``(uri, {name: value})`` records, many per round trip; returns the uris.

        Raises:
            QueueFullError: as :meth:`enqueue`; its ``details["accepted"]`` lists the uris
                that went in before the stream (or Redis's memory) was full.
        """
        return self._send_all(
            Outgoing(self._fields(uri, inputs, deadline_s), uri) for uri, inputs in records
        )

    def _send_all(self, records: Iterable[Outgoing]) -> list[str]:
        """Send records in chunks of at most _CHUNK records and _CHUNK_BYTES; returns the
        uris."""
        uris: list[str] = []
        chunk: list[Outgoing] = []
        size = 0
        for record in records:
            record_size = sum(len(v) for v in record.fields.values())
            if chunk and size + record_size > _CHUNK_BYTES:
                self._send(chunk, uris)
                chunk, size = [], 0
            chunk.append(record)
            size += record_size
            if len(chunk) == _CHUNK:
                self._send(chunk, uris)
                chunk, size = [], 0
        if chunk:
            self._send(chunk, uris)
        return uris

    def _send(self, records: list[Outgoing], accepted: list[str]) -> None:
        """Add records, in order, as far as the server's bound and Redis's memory let them;
        wait for room up to ``wait_if_full_s``, then raise QueueFullError naming what went in."""
        import redis

        self._producer.number(records)  # now: nothing else may send between numbers and send
        deadline = time.monotonic() + self.wait_if_full_s
        pause = 0.005
        while records:
            try:
                added = self._producer.add(records)
            except redis.exceptions.OutOfMemoryError as exc:  # before the script ran
                added = Added(0, f"OOM {exc}", -1, 0)
            accepted.extend(r.uri for r in records[: added.count])
            records = records[added.count :]
            if not records:
                return
            if added.why != FULL and not added.out_of_memory:
                raise QueueError(
                    f"Redis refused record {records[0].uri!r} on stream {self.stream}: {added.why}",
                    accepted=list(accepted),
                )
            if time.monotonic() + pause > deadline:
                raise QueueFullError(self._full_message(added), accepted=list(accepted))
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _full_message(self, added: Added) -> str:
        if added.out_of_memory:
            return (
                f"Redis is out of memory (maxmemory reached: {added.why}); stream "
                f"{self.stream} takes no more records until workers answer queued ones and "
                "their results are fetched; retry later, pass wait_if_full_s to wait, or give "
                "Redis more memory"
            )
        return (
            f"stream {self.stream} holds {added.length} unprocessed records and the server's "
            f"bound (data.max_queue_len) is {added.bound}; retry later, pass wait_if_full_s "
            "to wait, or raise the bound"
        )

    def _fields(self, uri: str, inputs: Mapping[str, Any], deadline_s: float | None) -> Any:
        deadline_ms = None if deadline_s is None else int((time.time() + deadline_s) * 1000)
        return native.encode_request(uri, _named(inputs), deadline_ms, views=True)

    def predict(self, inputs: Any, timeout: float = 30.0) -> Any:
        """Send one record and wait for its result; ``timeout`` bounds the total wait.

        The result goes to a key only this call knows (protocol 2, ``reply_to``): no other
        client, and no :meth:`OutputQueue.dequeue`, can take it.

        Args:
            inputs: an ndarray, image bytes or path, or a dict of them by input name;
                a list of those sends a batch and returns a list of results.

        Raises:
            ResultTimeoutError: no result within ``timeout`` seconds.
            ZooServingError: the server's error for a failed record (code and message).
        """
        if isinstance(inputs, list):
            return self.predict_many(inputs, timeout)
        return self.predict_many([inputs], timeout)[0]

    def predict_many(
        self, batch: list[Any], timeout: float = 30.0, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Send several records and wait for all of them; ``timeout`` bounds the total wait.

        With ``return_exceptions``, a failed record's error object takes its place in the list
        instead of being raised.

        Raises:
            ResultTimeoutError: results missing after ``timeout`` seconds
                (``details["missing"]``: how many).
        """
        tokens = [uuid.uuid4().hex for _ in batch]
        self._send_private(tokens, batch, timeout)
        replies = [keys.reply(self.stream, t) for t in tokens]
        if len(replies) == 1:  # one BLPOP, no first look
            one = self._pop(replies[0], timeout)
            results = {} if one is None else {replies[0]: one}
        else:
            results = self._pop_many(replies, timeout)
        missing = len(replies) - len(results)
        if missing:
            what = (
                f"no result for predict-{tokens[0]} within {timeout}s; is a server running?"
                if len(replies) == 1
                else f"{missing} of {len(replies)} results missing after {timeout}s"
            )
            raise ResultTimeoutError(what, missing=missing)
        if return_exceptions:
            return [results[k] for k in replies]
        return [_value(results[k]) for k in replies]

    def _send_private(self, tokens: list[str], batch: list[Any], deadline_s: float) -> None:
        deadline_ms = int((time.time() + deadline_s) * 1000)
        self._send_all(
            Outgoing(
                native.encode_request(
                    f"predict-{token}", _named(x), deadline_ms, views=True, reply_to=token.encode()
                ),
                f"predict-{token}",
            )
            for token, x in zip(tokens, batch)
        )


class OutputQueue(_RedisUser):
    """Fetches results; takes the same arguments as :class:`InputQueue`.

    A fetched result is removed from Redis (as in the original client); results nobody fetches
    expire after ``data.result_ttl_s``.
    """

    def query(self, uri: str, timeout: float | None = None) -> Any:
        """The result of ``uri``, or None if it is not there yet.

        With ``timeout`` (seconds), block up to that long for it instead of returning None.
        Raises the record's :class:`ZooServingError` when it failed.
        """
        result = self._pop(keys.result(self.stream, uri), timeout)
        return None if result is None else _value(result)

    def query_many(self, uris: list[str], timeout: float) -> dict[str, Any]:
        """Results of several uris, waiting up to ``timeout`` seconds in total; a failed record
        maps to its error object, a missing one is absent."""
        by_key = {keys.result(self.stream, u): u for u in uris}
        return {by_key[k]: v for k, v in self._pop_many(list(by_key), timeout).items()}

    def dequeue(self) -> dict[str, Any]:
        """Every result not fetched yet, by uri (failed records map to their error object)."""
        out: dict[str, Any] = {}
        finished = keys.finished(self.stream)
        while True:
            uris = self.db.lpop(finished, 1000)
            if not uris:
                return out
            pipe = self.db.pipeline(transaction=False)
            for uri in uris:
                pipe.lpop(keys.result(self.stream, uri))
            for uri, blob in zip(uris, pipe.execute()):
                if blob is not None:
                    out[uri.decode("utf-8", "replace")] = decode_result(blob)
