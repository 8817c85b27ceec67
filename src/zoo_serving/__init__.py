"""zoo_serving: serve trained models from a Redis stream.

Clients push images or tensors into a stream; workers batch them, run the model, and write a
top-N answer (or the output tensor) back to Redis::

    import zoo_serving
    zoo_serving.serve("config.yaml")                      # blocking server

    from zoo_serving import InputQueue
    InputQueue().predict("cat.jpg", timeout=10)           # [[class_index, probability]]

Importing this package reads no file, touches no network and configures no logging.
"""

from __future__ import annotations

from ._version import __version__
from .backends import Model, TensorSpec, detect_model, load_model
from .client import InputQueue, OutputQueue
from .config import Config, load_config
from .errors import (
    BrokerConnectionError,
    ConfigError,
    DeadlineExceededError,
    InputError,
    MissingDependencyError,
    ModelError,
    QueueFullError,
    ResultTimeoutError,
    ServerError,
    UriInUseError,
    ZooServingError,
)
from .runners.spark import serve_on as serve_on_spark
from .server import Server, serve
from .serving.worker import Worker
from .spark.dataframe import predict_df

__all__ = [
    "BrokerConnectionError",
    "Config",
    "ConfigError",
    "DeadlineExceededError",
    "InputError",
    "InputQueue",
    "MissingDependencyError",
    "Model",
    "ModelError",
    "OutputQueue",
    "QueueFullError",
    "ResultTimeoutError",
    "Server",
    "ServerError",
    "TensorSpec",
    "UriInUseError",
    "Worker",
    "ZooServingError",
    "__version__",
    "detect_model",
    "load_config",
    "load_model",
    "predict_df",
    "serve",
    "serve_on_spark",
]
