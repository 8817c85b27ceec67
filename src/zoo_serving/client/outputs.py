"""The fetching side: :class:`OutputQueue` takes results of records enqueued by uri."""

from __future__ import annotations

from typing import Any

from .. import keys
from ..wire.native import decode_result
from .common import RedisUser, result_or_raise


class OutputQueue(RedisUser):
    """Fetches results; takes the same arguments as :class:`InputQueue`.

    A fetched result is removed from Redis (as in the original client); results nobody fetches
    expire after ``data.result_ttl_s``.
    """

    def query(self, uri: str, timeout: float | None = None) -> Any:
        """The result of ``uri``, or None if it is not there yet.

        With ``timeout`` (seconds), block up to that long for it instead of returning None.
        Raises the record's :class:`ZooServingError` when it failed.
        """
        result = self._pop(keys.result(self._part(uri), uri), timeout)
        return None if result is None else result_or_raise(result)

    def query_many(self, uris: list[str], timeout: float) -> dict[str, Any]:
        """Results of several uris, waiting up to ``timeout`` seconds in total; a failed record
        maps to its error object, a missing one is absent."""
        by_key = {keys.result(self._part(u), u): u for u in uris}
        return {by_key[k]: v for k, v in self._pop_many(list(by_key), timeout).items()}

    def dequeue(self) -> dict[str, Any]:
        """Every result not fetched yet, by uri (failed records map to their error object)."""
        out: dict[str, Any] = {}
        for part in keys.partition_streams(self.stream, self.partitions):
            finished = keys.finished(part)
            while True:
                uris = self.db.lpop(finished, 1000)
                if not uris:
                    break
                pipe = self.db.pipeline(transaction=False)
                for uri in uris:
                    pipe.lpop(keys.result(part, uri))
                for uri, blob in zip(uris, pipe.execute()):
                    if blob is not None:
                        out[uri.decode("utf-8", "replace")] = decode_result(blob)
        return out
