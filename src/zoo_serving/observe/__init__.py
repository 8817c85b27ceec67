"""Observing a server: what workers did (:mod:`.stats`), Prometheus metrics and the stream
gauges (:mod:`.metrics`), and TensorBoard summaries (:mod:`.tensorboard`)."""
