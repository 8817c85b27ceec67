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

- :mod:`.common`: the Redis connection both share, waiting for results, input conversion;
- :mod:`.inputs`: :class:`InputQueue` (``enqueue``, ``predict``);
- :mod:`.outputs`: :class:`OutputQueue` (``query``, ``dequeue``).
"""

from __future__ import annotations

from .inputs import InputQueue
from .outputs import OutputQueue

__all__ = ["InputQueue", "OutputQueue"]
