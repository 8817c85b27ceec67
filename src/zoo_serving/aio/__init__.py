"""The asyncio client: ``await q.predict(x)`` with many records in flight on one connection.

See :mod:`zoo_serving.client.aio`::

    from zoo_serving.aio import AsyncInputQueue, AsyncOutputQueue
"""

from __future__ import annotations

from ..client.aio import AsyncInputQueue
from ..client.aio_base import AsyncOutputQueue

__all__ = ["AsyncInputQueue", "AsyncOutputQueue"]
