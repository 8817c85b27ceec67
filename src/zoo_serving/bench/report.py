"""How ``zoo-serve bench`` shows its load points: a table, a JSON file, a PNG plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError
from . import LoadPoint
from .server import STAGES

_STAGE_HEADS = {
    "queue_wait": "queue",
    "decode": "decode",
    "inference": "infer",
    "postprocess": "post",
    "write": "write",
}
BUSY_WARN = 0.9  # a load thread this busy may have been the bottleneck


def load_label(point: LoadPoint) -> str:
    if point.mode == "closed":
        return f"{point.clients} client{'s' * (point.clients != 1)}"
    return f"{point.rate:g}/s"


def format_table(points: Sequence[LoadPoint]) -> str:
    """One row per load level: throughput, latency percentiles, the server's split (ms)."""
    heads = ["mode", "load", "rec/s", "p50 ms", "p90 ms", "p99 ms"]
    heads += [_STAGE_HEADS[s] for s in STAGES] + ["batch"]
    rows = [heads]
    for p in points:
        lat = p.latency_ms
        row = [p.mode, load_label(p), f"{p.throughput:.1f}"]
        row += [_ms(lat.get(k)) for k in ("p50", "p90", "p99")]
        row += [_ms(p.server_ms.get(s)) for s in STAGES]
        row.append("-" if p.mean_batch is None else f"{p.mean_batch:.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def notes(points: Sequence[LoadPoint]) -> list[str]:
    """What a reader of the table should know: failures, a server that fell behind, a load
    generator that may have been the limit."""
    out = []
    for p in points:
        where = f"{p.mode} loop at {load_label(p)}"
        if p.failed:
            codes = ", ".join(f"{code} {n}" for code, n in sorted(p.errors.items()))
            out.append(f"{where}: {p.failed} of {p.sent} records failed ({codes})")
        if p.missing:
            out.append(f"{where}: {p.missing} of {p.sent} records got no result in time")
        if p.fell_behind:
            late = p.missing + p.errors.get("deadline_exceeded", 0)
            expired = f", {late} of {p.sent} records expired or missing" if late else ""
            out.append(
                f"{where}: the server fell behind: {p.throughput:.1f} records/s answered of "
                f"{p.rate:g} offered, p99 {p.latency_ms.get('p99', math.nan):.1f} ms{expired}"
            )
        if p.mode == "open" and p.rate and p.send_rate < 0.95 * p.rate:
            out.append(
                f"{where}: the load generator sent only {p.send_rate:.1f} records/s; "
                "use --processes"
            )
        if p.client_busy >= BUSY_WARN:
            out.append(
                f"{where}: a load process used {p.client_busy:.0%} of a core and may have been "
                "the limit; use --processes"
            )
    return out


def failed(points: Sequence[LoadPoint]) -> list[str]:
    """Why the run failed, if it did: records that errored (other than expiring because the
    server fell behind an open loop), records lost in a closed loop, levels with no answer."""
    out = []
    for p in points:
        where = f"{p.mode} loop at {load_label(p)}"
        errors = {c: n for c, n in p.errors.items() if c != "deadline_exceeded" or p.mode != "open"}
        if errors:
            out.append(f"{where}: records failed: {errors}")
        if p.missing and p.mode == "closed":
            out.append(f"{where}: {p.missing} records never answered")
        if p.answered == 0:
            out.append(f"{where}: no record was answered")
    return out


def write_json(
    path: str | os.PathLike[str], points: Sequence[LoadPoint], meta: Mapping[str, Any]
) -> None:
    """``meta`` and every point's :meth:`LoadPoint.to_dict` as ``{..., "points": [...]}``."""
    body = {**meta, "points": [p.to_dict() for p in points]}
    Path(path).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def write_plot(
    path: str | os.PathLike[str], points: Sequence[LoadPoint], title: str | None = None
) -> None:
    """A PNG: throughput (top) and p99 latency (bottom) against the load, a column per mode
    (clients for closed loop, records/s for open loop)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib: pip install 'zoo-serving[bench]'"
        ) from None
    modes = [m for m in ("closed", "open") if any(p.mode == m for p in points)]
    fig = Figure(figsize=(5.5 * max(len(modes), 1), 7), tight_layout=True)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    axes = fig.subplots(2, max(len(modes), 1), squeeze=False)
    for col, mode in enumerate(modes):
        series = sorted((p for p in points if p.mode == mode), key=lambda p: p.load)
        xs = [p.load for p in series]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(xs, [p.throughput for p in series], "o-")
        top.set_ylabel("throughput (records/s)")
        bottom.plot(xs, [p.latency_ms.get("p99", math.nan) for p in series], "o-", color="C3")
        bottom.set_ylabel("p99 latency (ms)")
        xlabel = "concurrent clients" if mode == "closed" else "offered rate (records/s)"
        for ax in (top, bottom):
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
            if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
        top.set_title(f"{mode} loop")
    if title:
        fig.suptitle(title)
    fig.savefig(os.fspath(path), format="png", dpi=100)
