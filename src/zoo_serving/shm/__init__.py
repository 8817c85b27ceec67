"""Shared memory for clients on the server's host (protocol 3, ``shm:<name>`` inputs), like
Triton's system shared memory: a client places tensors in a region it creates and registers
(:class:`Arena`), records carry references, and the worker reads them in place
(:class:`Regions`). See ``docs/protocol.md``.

- :mod:`.region`: the files of ``/dev/shm``, created 0600, mapped after an owner check;
- :mod:`.registry`: leases in Redis, renewed by the client, swept by the workers;
- :mod:`.arena`: the client's side, slots for the tensors of records in flight;
- :mod:`.attach`: the worker's side.
"""

from __future__ import annotations

from .arena import Arena
from .attach import Regions
from .region import Attached, Region

__all__ = ["Arena", "Attached", "Region", "Regions"]
