"""The models of a server, as Redis holds them: the model index (which models the repository
has, their streams and versions) and the wanted state (which of them should be loaded, in
which versions), with a generation counter that workers of every runner watch.

The server's repository controller writes both; ``zoo-serve models``, the HTTP repository
extension and the Python API change the wanted state; clients read the index to find a model's
stream. Keys: :func:`keys.models`, :func:`keys.wanted`, :func:`keys.wanted_gen`, all under the
server's ``data.stream`` hash tag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .. import keys

HOST_STALE_S = 10.0  # a worker that published no model states this long is gone


class ModelControl:
    """The model index and wanted state of the server on ``base`` (its ``data.stream``).

    Args:
        redis: a redis-py client (bytes responses).
        base: the server's ``data.stream``.
    """

    def __init__(self, redis: Any, base: str) -> None:
        self.redis = redis
        self.base = base

    # ------------------------------------------------------------------ the index

    def publish_index(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the model index with ``entries`` (name -> description), in one step."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.models(self.base))
        if entries:
            pipe.hset(
                keys.models(self.base),
                mapping={name: json.dumps(entry) for name, entry in entries.items()},
            )
        pipe.incr(keys.wanted_gen(self.base))
        pipe.execute()

    def index(self) -> dict[str, dict[str, Any]]:
        """The model index: name -> description (stream, versions, policy, default, ...)."""
        return _decode_all(self.redis.hgetall(keys.models(self.base)))

    def entry(self, name: str) -> dict[str, Any] | None:
        """One model's index entry, or None when the repository has no such model."""
        raw = self.redis.hget(keys.models(self.base), name)
        return _decode(raw) if raw is not None else None

    # ------------------------------------------------------------------ the wanted state

    def want(self, name: str, *, load: bool, versions: Iterable[int] | None = None) -> int:
        """Say model ``name`` should be loaded (in ``versions``, or as its policy says) or
        unloaded; returns the new generation."""
        body: dict[str, Any] = {"load": load}
        if versions is not None:
            body["versions"] = sorted(int(v) for v in versions)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.wanted(self.base), name, json.dumps(body))
        pipe.incr(keys.wanted_gen(self.base))
        return int(pipe.execute()[-1])

    def want_all(self, wanted: Mapping[str, Mapping[str, Any]]) -> int:
        """Replace the whole wanted state (name -> ``{"load": bool, "versions": [...]}``)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.wanted(self.base))
        if wanted:
            pipe.hset(
                keys.wanted(self.base),
                mapping={name: json.dumps(dict(body)) for name, body in wanted.items()},
            )
        pipe.incr(keys.wanted_gen(self.base))
        return int(pipe.execute()[-1])

    def wanted(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """(generation, name -> ``{"load": bool, "versions": [...]}``), read in one step."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(keys.wanted_gen(self.base))
        pipe.hgetall(keys.wanted(self.base))
        gen, raw = pipe.execute()
        return int(gen or 0), _decode_all(raw)

    # ------------------------------------------------------------------ what workers hold

    def hosts(self, stale_s: float = HOST_STALE_S) -> dict[str, dict[str, Any]]:
        """Each live worker's models (worker name -> model name -> state: state, versions,
        current, memory, load_s, loads, evictions, ...); a worker that published nothing for
        ``stale_s`` is gone."""
        now = time.time()
        out = {}
        for name, body in _decode_all(self.redis.hgetall(keys.model_states(self.base))).items():
            if now - float(body.get("_host", {}).get("ts", 0)) <= stale_s:
                body.pop("_host", None)
                out[name] = body
        return out

    def generation(self) -> int:
        """The current generation: it moves whenever the wanted state or the index does."""
        return int(self.redis.get(keys.wanted_gen(self.base)) or 0)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _decode_all(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    return {name.decode("utf-8", "replace"): _decode(body) for name, body in raw.items()}
