"""Load against a running server: closed loop (N records in flight) and open loop (a rate).

What ``zoo-serve bench`` runs; also callable from Python::

    from zoo_serving.bench import closed_loop, open_loop

    inputs = [{"input": np.zeros((3, 224, 224), np.float32)}]
    point = closed_loop("config.yaml", None, inputs, clients=8, duration_s=10)
    point.throughput, point.latency_ms["p99"], point.server_ms["inference"]
    open_loop("redis://localhost:6379", "serving_stream", inputs, rate=500, duration_s=10)

A run first loads for ``warmup_s`` unmeasured, then measures. Latency is from a record's send
(open loop: from when it was due) to its result, in ms; throughput is results received per
second inside the measured window. The server-side split comes from the workers' heartbeats
(``keys.workers``), read as the window opens and again after the last result, once every worker
beat past it: mean ms per record in each stage over what the workers did meanwhile (with other
clients on the stream, their records count too).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .driver import Job, Outcome
from .pool import Processes, Threads
from .server import beats_after, connect_checked, read_beats, resolve_target, stage_split

__all__ = ["LoadPoint", "closed_loop", "open_loop"]


@dataclass(frozen=True, kw_only=True)
class LoadPoint:
    """One measured load level.

    Attributes:
        mode: ``"closed"`` or ``"open"``.
        clients: closed loop: records kept in flight (concurrent clients).
        rate: open loop: offered records/s.
        sent, answered, failed, missing: measured records; ``answered`` counts every result,
            ``failed`` the error results among them (by code in ``errors``), ``missing`` those
            with none within the timeout.
        duration_s: the measured window.
        throughput: results received per second in the window.
        latency_ms: ``p50``, ``p90``, ``p99``, ``max``, ``mean`` (empty when nothing came back).
        server_ms: mean ms per record in each server stage (``queue_wait``, ``decode``,
            ``inference``, ``postprocess``, ``write``); empty when no worker published them.
        mean_batch: records per batch the workers ran meanwhile, if they said.
        send_rate: measured records sent per second (open loop: below ``rate`` when the load
            generator could not keep its schedule).
        client_busy: the busiest load thread's share of a core; near 1.0 the load generator
            itself was the limit (use more ``processes``).
        samples: the first ``keep`` ``(input index, result)`` pairs; not in :meth:`to_dict`.
    """

    mode: str
    clients: int | None
    rate: float | None
    sent: int
    answered: int
    failed: int
    missing: int
    duration_s: float
    throughput: float
    latency_ms: dict[str, float]
    server_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    send_rate: float = 0.0
    client_busy: float = 0.0
    processes: int = 1
    samples: tuple[tuple[int, Any], ...] = field(default=(), repr=False, compare=False)

    @property
    def load(self) -> float:
        """The load level: clients (closed loop) or records/s (open loop)."""
        return float((self.clients if self.mode == "closed" else self.rate) or 0)

    @property
    def fell_behind(self) -> bool:
        """Open loop: the server did not keep up with the offered rate (records expired or
        missing, or under 90% of the rate answered)."""
        if self.mode != "open":
            return False
        late = self.missing or self.errors.get("deadline_exceeded", 0)
        return bool(late) or self.throughput < 0.9 * (self.rate or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``samples``, plus ``load`` and ``fell_behind``; JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["samples"]
        out["load"] = self.load
        out["fell_behind"] = self.fell_behind
        return out


# ------------------------------------------------------------------ public API


def closed_loop(
    url_or_config: Any,
    stream: str | None,
    inputs: Sequence[Mapping[str, Any]],
    *,
    clients: int,
    duration_s: float | None = None,
    records: int | None = None,
    warmup_s: float = 1.0,
    processes: int = 1,
    progress: bool = False,
    keep: int = 0,
    timeout_s: float = 10.0,
    server_split: bool = True,
) -> LoadPoint:
    """Keep ``clients`` records in flight: send that many, and the next one as each returns.

    Args:
        url_or_config: a ``redis://`` URL, or a config (path, mapping or :class:`Config`)
            whose ``data`` section says where Redis is.
        stream: the input stream; None: the config's ``data.stream``.
        inputs: records to cycle through, ``{input_name: ndarray | encoded image bytes}``.
        clients: records in flight, split over ``processes`` spawned load processes.
        duration_s, records: measure this long, or this many records (whichever is first).
        warmup_s: load this long before measuring.
        progress: draw a progress bar on stderr.
        keep: keep the first ``keep`` ``(input index, result)`` pairs in ``samples``.
        timeout_s: a record unanswered this long after it was sent is missing (the server
            drops it, as expired, once it is this late).
        server_split: read the server's stage times (waits for the next heartbeat, ~1 s).

    Raises:
        BrokerConnectionError: Redis does not answer.
        ServerError: no worker is ready on the stream.
    """
    if clients < 1:
        raise ConfigError(f"clients: expected at least 1, got {clients}", key="clients")
    if duration_s is None and records is None:
        raise ConfigError("closed loop: give duration_s or records (or both)")
    processes = _check_processes(processes, clients)
    jobs = [
        dict(clients=share, records=None if records is None else _share(records, processes, i))
        for i, share in enumerate(_split(clients, processes))
    ]
    label = f"closed loop, {clients} client{'s' * (clients != 1)}"
    return _run(
        url_or_config,
        stream,
        inputs,
        "closed",
        jobs,
        _Settings(warmup_s, duration_s, records, timeout_s, keep, progress, server_split, label),
        clients=clients,
    )


def open_loop(
    url_or_config: Any,
    stream: str | None,
    inputs: Sequence[Mapping[str, Any]],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    processes: int = 1,
    progress: bool = False,
    keep: int = 0,
    timeout_s: float = 10.0,
    server_split: bool = True,
) -> LoadPoint:
    """Send ``rate`` records per second for ``duration_s``, whatever comes back.

    Latency counts from when each record was due, so time it waited for the load generator
    or the server counts. Arguments as :func:`closed_loop`; ``processes`` share the rate,
    their schedules interleaved.
    """
    if not rate > 0:
        raise ConfigError(f"rate: expected records/s above 0, got {rate}", key="rate")
    if not duration_s > 0:
        raise ConfigError(f"duration_s: expected seconds above 0, got {duration_s}")
    processes = _check_processes(processes, None)
    jobs = [dict(rate=rate / processes, offset_s=i / rate) for i in range(processes)]
    label = f"open loop, {rate:g} records/s"
    return _run(
        url_or_config,
        stream,
        inputs,
        "open",
        jobs,
        _Settings(warmup_s, duration_s, None, timeout_s, keep, progress, server_split, label),
        rate=rate,
    )


# ------------------------------------------------------------------ one run


@dataclass(frozen=True)
class _Settings:
    warmup_s: float
    duration_s: float | None
    records: int | None
    timeout_s: float
    keep: int
    progress: bool
    server_split: bool
    label: str


def _run(
    target: Any,
    stream: str | None,
    inputs: Sequence[Mapping[str, Any]],
    mode: str,
    shares: list[dict[str, Any]],
    settings: _Settings,
    **load: Any,
) -> LoadPoint:
    data, url = resolve_target(target)
    stream = stream or data.stream
    if not inputs:
        raise ConfigError("inputs: expected at least one record to send, got none")
    db = connect_checked(data, url, stream)
    try:
        frozen = tuple(dict(x) for x in inputs)
        jobs = [
            Job(
                data=data,
                url=url,
                stream=stream,
                inputs=frozen,
                mode=mode,
                warmup_s=settings.warmup_s,
                duration_s=settings.duration_s,
                timeout_s=settings.timeout_s,
                keep=settings.keep,
                first_input=i * len(frozen) // len(shares),
                **share,
            )
            for i, share in enumerate(shares)
        ]
        runner = Threads(jobs) if len(jobs) == 1 else Processes(jobs)
        outcomes, before = _watch(runner, db, stream, settings)
        after = beats_after(db, stream) if settings.server_split else {}
    finally:
        db.close()
    server_ms, mean_batch = stage_split(before, after)
    return _merge(mode, outcomes, settings, server_ms, mean_batch, **load)


def _watch(
    runner: Threads | Processes, db: Any, stream: str, settings: _Settings
) -> tuple[list[Outcome], dict[str, dict[str, Any]]]:
    """Start the jobs, draw progress, read the heartbeats as the window opens; the outcomes."""
    from ..progress import ProgressBar

    if settings.duration_s is None:  # measured by count
        total, unit = settings.records or 0, "records"
    else:
        total, unit = math.ceil(settings.warmup_s + settings.duration_s), "s"
    bar = ProgressBar(total, settings.label, unit) if settings.progress else None
    before: dict[str, dict[str, Any]] | None = None
    try:
        start_at = runner.start()
        measure_at = start_at + settings.warmup_s
        while not runner.wait(0.1):
            now = time.time()
            if before is None and now >= measure_at:
                before = read_beats(db, stream) if settings.server_split else {}
            if bar is not None:
                done = runner.answered() if unit == "records" else int(now - start_at)
                bar(min(max(done, 0), total))
        if bar is not None:
            bar(runner.answered() if unit == "records" else total)
    finally:
        runner.stop()
        if bar is not None:
            bar.close()
    if before is None:  # over before the window opened: a short run
        before = {}
    return runner.outcomes(), before


def _merge(
    mode: str,
    outcomes: list[Outcome],
    settings: _Settings,
    server_ms: dict[str, float],
    mean_batch: float | None,
    **load: Any,
) -> LoadPoint:
    latencies = np.concatenate([o.latencies_s for o in outcomes]) * 1000.0
    sent = sum(o.sent for o in outcomes)
    answered = sum(o.answered for o in outcomes)
    by_count = settings.records is not None and sent >= settings.records
    if settings.duration_s is not None and not by_count:
        duration = settings.duration_s  # results of any record inside the window
        throughput = sum(o.in_window for o in outcomes) / duration
    else:  # measured until a count was answered
        duration = max(o.last_answer_s for o in outcomes)
        throughput = answered / duration if duration > 0 else 0.0
    errors: dict[str, int] = {}
    for o in outcomes:
        for code, n in o.errors.items():
            errors[code] = errors.get(code, 0) + n
    last_send = max(o.last_send_s for o in outcomes)
    return LoadPoint(
        mode=mode,
        clients=load.get("clients"),
        rate=load.get("rate"),
        sent=sent,
        answered=answered,
        failed=sum(o.failed for o in outcomes),
        missing=sent - answered,
        duration_s=round(duration, 6),
        throughput=round(throughput, 3),
        latency_ms=_percentiles(latencies),
        server_ms=server_ms,
        errors=errors,
        mean_batch=mean_batch,
        send_rate=round(sent / max(last_send, duration, 1e-9), 3),
        client_busy=round(max(o.busy for o in outcomes), 3),
        processes=len(outcomes),
        samples=tuple(s for o in outcomes for s in o.samples)[: settings.keep],
    )


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    if ms.size == 0:
        return {}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    values = {"p50": p50, "p90": p90, "p99": p99, "max": ms.max(), "mean": ms.mean()}
    return {k: round(float(v), 3) for k, v in values.items()}


def _split(total: int, parts: int) -> list[int]:
    return [_share(total, parts, i) for i in range(parts)]


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _check_processes(processes: int, clients: int | None) -> int:
    if processes < 1:
        raise ConfigError(f"processes: expected at least 1, got {processes}", key="processes")
    if clients is not None and processes > clients:
        raise ConfigError(
            f"processes: {processes} load processes for {clients} clients leaves some idle; "
            "use at most as many processes as clients",
            key="processes",
        )
    return processes
