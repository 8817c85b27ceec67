"""Serving: the worker loop every runner runs, and the pieces it is made of.

- :mod:`.worker`: the stream pipeline (read and decode, batch, write and acknowledge);
- :mod:`.batch`: the batch core (deadlines, stack and pad, predict, split on failure,
  postprocess), shared with the DataFrame API;
- :mod:`.preprocess` / :mod:`.postprocess`: wire payloads -> model inputs, model outputs ->
  answers;
- :mod:`.heartbeat`: a worker's presence in Redis;
- :mod:`.remote`: what a worker needs in a process its runner does not share memory with.
"""
