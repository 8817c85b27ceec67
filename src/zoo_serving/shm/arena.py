"""The client's side of shared memory: one region, registered on the stream and renewed from
a thread, and slots in it for the tensors of the records in flight (first fit, freed when a
record's result is back)."""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Any

import numpy as np

from ..broker.connection import connect
from ..config import DataConfig
from ..wire.native import ShmRef
from . import registry
from .region import ALIGN, Region

log = logging.getLogger(__name__)

DEFAULT_BYTES = 64 << 20  # an arena's size unless asked otherwise
MIN_BYTES = 64 << 10  # smaller tensors go through Redis: a slot costs more than their copy


class Slots:
    """Free space of a region: first fit on :data:`ALIGN`-byte boundaries, a freed slot merged
    with its free neighbours. Thread-safe."""

    def __init__(self, nbytes: int) -> None:
        self.free: list[tuple[int, int]] = [(0, nbytes)]  # (offset, size), by offset
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> int | None:
        """The offset of a slot of ``nbytes``, or None when none is free."""
        size = -(-nbytes // ALIGN) * ALIGN
        with self._lock:
            for i, (offset, free) in enumerate(self.free):
                if free >= size:
                    if free == size:
                        del self.free[i]
                    else:
                        self.free[i] = (offset + size, free - size)
                    return offset
        return None

    def give(self, offset: int, nbytes: int) -> None:
        size = -(-nbytes // ALIGN) * ALIGN
        with self._lock:
            i = bisect.bisect(self.free, (offset, size))
            start, end = offset, offset + size
            if i < len(self.free) and self.free[i][0] == end:  # joins the next
                end += self.free.pop(i)[1]
            if i > 0 and sum(self.free[i - 1]) == start:  # joins the previous
                start = self.free.pop(i - 1)[0]
                i -= 1
            self.free.insert(i, (start, end - start))


class Arena:
    """A region of ``nbytes`` for one client, registered on ``stream``; see
    :meth:`zoo_serving.InputQueue.predict` (``shared_memory``).

    Args:
        data: the client's data config (where Redis is); ``url`` overrides its address.
        stream: the stream whose workers read the region.
        nbytes: the region's size.
        lease_s: how long the region outlives this process's last renewal.
    """

    def __init__(
        self,
        data: DataConfig,
        url: str | None,
        stream: str,
        nbytes: int = DEFAULT_BYTES,
        lease_s: float = registry.LEASE_S,
    ) -> None:
        self.stream = stream
        self.region = Region(nbytes)
        self.slots = Slots(nbytes)
        self._lease = registry.lease(nbytes, lease_s)
        self._stop = threading.Event()
        try:
            self._redis = connect(data, url=url, socket_timeout=5.0)
            registry.register(self._redis, stream, self.region.name, self._lease)
        except BaseException:
            self.region.close()
            raise
        self._renewer = threading.Thread(target=self._renew, name="zoo-shm-lease", daemon=True)
        self._renewer.start()

    @property
    def name(self) -> str:
        return self.region.name

    def place(self, arr: np.ndarray) -> ShmRef | None:
        """Copy ``arr`` (C order) into a free slot; its reference, or None when it is small
        or there is no room (then it goes through Redis)."""
        if arr.nbytes < MIN_BYTES or arr.dtype.kind not in "biufc":
            return None
        offset = self.slots.take(arr.nbytes)
        if offset is None:
            return None
        dest = np.frombuffer(self.region.view, arr.dtype, arr.size, offset).reshape(arr.shape)
        dest[...] = arr
        return ShmRef(self.region.name, offset, arr.nbytes, arr.dtype.str, tuple(arr.shape))

    def free(self, ref: ShmRef) -> None:
        """Give a slot back (its record's result is in, or nobody waits for it anymore)."""
        self.slots.give(ref.offset, ref.nbytes)

    def placer(self, taken: list[ShmRef]) -> Any:
        """``place`` for the inputs of a record: large tensors to slots (appended to
        ``taken``), the rest as they are."""

        def place(inputs: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for name, value in inputs.items():
                ref = self.place(value) if isinstance(value, np.ndarray) else None
                if ref is not None:
                    taken.append(ref)
                out[name] = value if ref is None else ref
            return out

        return place

    def _renew(self) -> None:
        while not self._stop.wait(registry.RENEW_S):
            try:
                registry.register(self._redis, self.stream, self.region.name, self._lease)
            except Exception as exc:  # Redis away: the workers keep it while the lease lasts
                log.warning("renewing shared memory region %s failed: %s", self.name, exc)

    def close(self) -> None:
        """Unregister and free the region."""
        self._stop.set()
        self._renewer.join(5)
        try:
            registry.unregister(self._redis, self.stream, self.region.name)
        except Exception as exc:
            log.debug("unregistering %s failed: %s", self.name, exc)
        self._redis.close()
        self.region.close()
