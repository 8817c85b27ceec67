"""``repository.on_unload: fail``: while a model is unloaded, its records are answered with a
``model_unloaded`` error instead of waiting in its stream for the next load."""

from __future__ import annotations

import logging
import threading

from .. import wire
from ..broker.connection import connect
from ..broker.partitions import open_queue
from ..broker.queue import consumer_name
from ..config import Config
from ..errors import ModelUnloadedError
from .writer import completion

log = logging.getLogger("zoo_serving.worker")


class Refuser:
    """Answers every record of model ``name``'s stream with a ``model_unloaded`` error until
    :meth:`stop`.

    Args:
        config: the server's config.
        name: the model.
        stream: the model's stream.
    """

    def __init__(self, config: Config, name: str, stream: str) -> None:
        self.config = config
        self.name = name
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"refuse-{name}", daemon=True)

    def start(self) -> Refuser:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        cfg = self.config
        client = connect(cfg.data, retries=0, socket_timeout=10.0)
        consumer = consumer_name(f"unloaded-{self.name}")
        # every partition of the model's stream (data.partitions), as its workers read them
        queue = open_queue(client, cfg.data, self.stream, consumer, cfg.params.claim_idle_ms)
        error = ModelUnloadedError(
            f"model {self.name!r} is unloaded and repository.on_unload is 'fail': its records "
            "are answered with this error until it is loaded again"
        )
        try:
            queue.setup()
            while not self._stop.is_set():
                try:
                    entries = queue.read(64, block_ms=200)
                    done = []
                    for entry in entries:
                        reply = wire.reply_kind(entry.fields)
                        uri = entry.fields.get(wire.native.F_URI, entry.id)
                        value = wire.encode_failure(reply, error)
                        done.append(completion(entry, reply, self.stream, uri, value))
                    if done:
                        queue.complete(done)
                        log.warning(
                            "answered %d record(s) of unloaded model %s with model_unloaded",
                            len(done),
                            self.name,
                        )
                except Exception as exc:  # Redis away: try again
                    log.warning("refusing records of unloaded model %s failed: %s", self.name, exc)
                    self._stop.wait(0.5)
        finally:
            queue.close()
