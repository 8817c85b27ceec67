"""The worker's side: shared memory inputs of records (``shm:<name>``, protocol 3) resolved to
views of the mapped regions, so a tensor reaches the model without a copy through Redis or a
socket; and the regions of clients that went away swept now and then."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DecodeError
from ..wire.native import RawInput
from . import registry
from .region import DIR, Attached

log = logging.getLogger(__name__)

SWEEP_S = 2.0  # how often a worker frees the regions of clients that went away


class Regions:
    """The regions one worker has mapped, by name.

    Args:
        client: a redis-py client (the worker's), for the registry.
        stream: the stream whose clients register regions.
        directory: where regions live (``/dev/shm``).
    """

    def __init__(self, client: Any, stream: str, directory: Path = DIR) -> None:
        self.client = client
        self.stream = stream
        self.directory = directory
        self._mapped: dict[str, Attached] = {}
        self._closing: list[Attached] = []
        self._next_sweep = 0.0

    def resolve(self, inputs: Sequence[RawInput]) -> list[RawInput]:
        """Inputs with every shared memory reference turned into a tensor viewing its bytes.

        Raises:
            DecodeError: a region that may not be mapped, or bytes outside it.
        """
        out = []
        for raw in inputs:
            ref = raw.ref
            if raw.kind != "shm" or ref is None:
                out.append(raw)
                continue
            view = self._region(ref.region).slice(ref.offset, ref.nbytes)
            out.append(dataclasses.replace(raw, kind="tensor", data=view, ref=None))
        return out

    def _region(self, name: str) -> Attached:
        region = self._mapped.get(name)
        if region is not None:
            return region
        if self.client is not None and registry.registered(self.client, self.stream, name) is None:
            raise DecodeError(
                f"shared memory region {name!r} is not registered on stream {self.stream} from "
                "this host (or its lease lapsed: its client went away)"
            )
        region = self._mapped[name] = Attached(name, self.directory)
        return region

    def maybe_sweep(self) -> None:
        """Every :data:`SWEEP_S`: free regions of clients that went away, and unmap here
        those no longer registered (once no array views them)."""
        now = time.monotonic()
        if now < self._next_sweep or self.client is None:
            return
        self._next_sweep = now + SWEEP_S
        try:
            registry.sweep(self.client, self.stream, self.directory)
            alive = {
                k.decode("utf-8", "replace")
                for k in self.client.hkeys(registry.keys.shm_regions(self.stream))
            }
        except Exception as exc:  # Redis away: next time
            log.debug("sweeping shared memory regions failed: %s", exc)
            return
        for name in [n for n in self._mapped if n not in alive]:
            self._closing.append(self._mapped.pop(name))
        self._closing = [r for r in self._closing if not r.close()]

    def close(self) -> None:
        for region in [*self._mapped.values(), *self._closing]:
            region.close()
        self._mapped.clear()
        self._closing = []
