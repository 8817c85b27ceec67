"""What ``zoo-serve bench`` asks the server side: where its Redis is, whether a worker is
ready, what model it serves, and how the workers' time splits into stages (from the cumulative
stage sums in their heartbeats, ``keys.workers``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .. import keys
from ..broker.connection import connect, redis_url, safe_url
from ..broker.presence import Presence
from ..config import Config, DataConfig
from ..errors import ServerError
from ..observe.stats import STAGES

BEAT_WAIT_S = 2.5  # longest wait for every worker's next heartbeat (they beat every second)
BEAT_STALE_S = 5.0  # a heartbeat this old is a worker that is gone


def resolve_target(target: Any) -> tuple[DataConfig, str | None]:
    """``(data config, URL or None)`` for a ``redis://`` URL, a config path, mapping or Config."""
    if isinstance(target, str) and "://" in target:
        return DataConfig(), target
    if isinstance(target, Config):
        return target.data, None
    from ..client.common import data_config

    return data_config(target), None


def connect_checked(data: DataConfig, url: str | None, stream: str) -> Any:
    """A connection to the server's Redis; raises ServerError unless a worker is ready."""
    db = connect(data, url=url, socket_timeout=None, socket_connect_timeout=5.0)
    if not Presence(db, stream).is_ready():
        where = safe_url(url or redis_url(data))
        db.close()
        raise ServerError(
            f"nothing is serving stream {stream!r} at {where}: no worker is ready "
            f"({keys.ready(stream)} is not set); start the server (`zoo-serve start -c "
            "config.yaml`) and wait until `zoo-serve status` says ready, or check data.stream"
        )
    return db


def model_info(db: Any, stream: str) -> dict[str, Any] | None:
    """The served model's description (backend, inputs, outputs), or None if none is published."""
    return Presence(db, stream).model()


# ------------------------------------------------------------------ the stage split


def read_beats(db: Any, stream: str) -> dict[str, dict[str, Any]]:
    """The live workers' heartbeats, by worker name."""
    return Presence(db, stream).heartbeats(max_age_s=BEAT_STALE_S)


def beats_after(db: Any, stream: str) -> dict[str, dict[str, Any]]:
    """The heartbeats once every live worker beat after the last result came back."""
    last = time.time()  # the outcomes are in: every result came back before now
    deadline = time.monotonic() + BEAT_WAIT_S
    while True:
        beats = read_beats(db, stream)
        fresh = all(float(b.get("ts", 0)) > last for b in beats.values())
        if fresh or time.monotonic() >= deadline:
            return beats
        time.sleep(0.05)


def stage_split(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, float], float | None]:
    """Mean ms per record in each stage between two heartbeat readings, and the mean batch.

    Workers are matched by name; one that appeared since ``before`` counts from zero, one
    that went away is left out, one whose counts went down (restarted) counts from zero.
    """
    sums = dict.fromkeys(STAGES, 0.0)
    records = batches = 0
    for name, beat in after.items():
        now = beat.get("stages") or {}
        if not now:
            continue
        was = before.get(name) or {}
        then = was.get("stages") or {}
        if now.get("records", 0) < then.get("records", 0):
            was, then = {}, {}
        count = int(now.get("records", 0)) - int(then.get("records", 0))
        if count <= 0:
            continue
        records += count
        batches += int(beat.get("batches", 0)) - int(was.get("batches", 0))
        for stage in STAGES:
            sums[stage] += float(now.get(stage, 0.0)) - float(then.get(stage, 0.0))
    if records == 0:
        return {}, None
    split = {stage: round(max(sums[stage], 0.0) * 1000.0 / records, 4) for stage in STAGES}
    return split, round(records / batches, 2) if batches > 0 else None
