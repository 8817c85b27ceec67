"""The broker: everything that speaks to Redis.

- :mod:`.connection`: connecting (``data.src``, AUTH, ACL, TLS), clear connection errors;
- :mod:`.queue`: the :class:`~.queue.Queue` the worker talks to, entries and completions;
- :mod:`.streams`: its Redis Streams implementation (consumer group, the atomic complete
  step), the stream's counts;
- :mod:`.producer`: records in, under the server's bound, each exactly once;
- :mod:`.presence`: heartbeats, readiness, the model description, stop requests;
- :mod:`.embedded`: the managed ``redis-server`` of the embedded default.

Nothing here knows a record's protocol or a model's framework.
"""
