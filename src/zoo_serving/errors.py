"""The one exception tree of zoo_serving.

Every error carries a stable ``code`` that is written into error results, so a client
gets back the same class the server raised::

    ZooServingError
    ├── ConfigError                 bad config key or value
    ├── MissingDependencyError      an optional framework is not installed
    ├── ModelError                  the model directory or the model itself
    │   ├── ModelNotFoundError      no model file where one was expected
    │   ├── AmbiguousModelError     several models in one directory
    │   ├── IncompleteModelError    half a model (a .prototxt without its .caffemodel, ...)
    │   ├── UnsupportedModelError   a framework this version cannot run
    │   └── InferenceError          the framework failed while predicting
    │       └── BatchTimeoutError   the model ran past params.batch_timeout_s on this record
    ├── InputError                  a record the server cannot turn into model input
    │   ├── DecodeError             an image or tensor payload that does not decode
    │   ├── ShapeError              a tensor whose shape does not fit the model
    │   ├── DtypeError              a tensor whose dtype does not fit the model
    │   ├── MissingInputError       a record without a payload the model needs
    │   └── PayloadTooLargeError    a payload over the configured limits
    ├── DeadlineExceededError       the client's deadline passed before the model ran
    ├── VersionUnavailableError     a record asked for a model version the server does not serve
    ├── ModelUnloadedError          the record's model was unloaded (repository.on_unload: fail)
    ├── QueueError                  talking to the broker
    │   ├── BrokerConnectionError   the broker does not answer
    │   │   └── BrokerPermissionError   the Redis user may not run a command the server needs
    │   ├── QueueFullError          the input stream is at its bound, or Redis at maxmemory
    │   └── UriInUseError           a uri whose record is queued or whose result waits
    ├── ResultTimeoutError          no result arrived within the client's timeout
    └── ServerError                 the server is not running, or failed to start

All of them survive pickling (they cross process, Spark and Ray boundaries).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AmbiguousModelError",
    "BatchTimeoutError",
    "BrokerConnectionError",
    "BrokerPermissionError",
    "ConfigError",
    "DeadlineExceededError",
    "ModelUnloadedError",
    "VersionUnavailableError",
    "DecodeError",
    "DtypeError",
    "IncompleteModelError",
    "InferenceError",
    "InputError",
    "MissingDependencyError",
    "MissingInputError",
    "ModelError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "QueueError",
    "QueueFullError",
    "ResultTimeoutError",
    "ServerError",
    "ShapeError",
    "UnsupportedModelError",
    "UriInUseError",
    "ZooServingError",
    "error_from_code",
]


class ZooServingError(Exception):
    """Base of every error zoo_serving raises."""

    code = "error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _rebuild(cls: type[ZooServingError], message: str, details: dict[str, Any]) -> ZooServingError:
    return cls(message, **details)


class ConfigError(ZooServingError, ValueError):
    """A config key is unknown or its value is not allowed."""

    code = "config"


class MissingDependencyError(ZooServingError, ImportError):
    """An optional framework is needed but not installed."""

    code = "missing_dependency"


class ModelError(ZooServingError):
    """The model directory or the model itself is unusable."""

    code = "model"


class ModelNotFoundError(ModelError, FileNotFoundError):
    """No model file was found where one was expected."""

    code = "model_not_found"


class AmbiguousModelError(ModelError):
    """A model directory holds more than one model."""

    code = "ambiguous_model"


class IncompleteModelError(ModelError):
    """A model directory holds half a model (e.g. an .xml without its .bin)."""

    code = "incomplete_model"


class UnsupportedModelError(ModelError):
    """The model's framework is not supported by this version."""

    code = "unsupported_model"


class InferenceError(ModelError):
    """The framework raised while running the model."""

    code = "inference"


class BatchTimeoutError(InferenceError):
    """The model ran longer than ``params.batch_timeout_s`` on this record, alone in its batch."""

    code = "batch_timeout"


class InputError(ZooServingError, ValueError):
    """A record cannot be turned into model input."""

    code = "bad_input"


class DecodeError(InputError):
    """An image or tensor payload does not decode."""

    code = "decode"


class ShapeError(InputError):
    """A tensor's shape does not fit the model input."""

    code = "bad_shape"


class DtypeError(InputError):
    """A tensor's dtype does not fit the model input."""

    code = "bad_dtype"


class MissingInputError(InputError):
    """A record lacks a payload the model needs."""

    code = "missing_input"


class PayloadTooLargeError(InputError):
    """A payload is over the configured size limits."""

    code = "too_large"


class DeadlineExceededError(ZooServingError):
    """The client's deadline passed before the record was served."""

    code = "deadline_exceeded"


class VersionUnavailableError(ZooServingError):
    """A record asked for a version of its model that the server does not serve."""

    code = "version_unavailable"


class ModelUnloadedError(ZooServingError):
    """The record's model was unloaded, and ``repository.on_unload: fail`` answers its queued
    records with this instead of keeping them for the next load."""

    code = "model_unloaded"


class QueueError(ZooServingError):
    """Talking to the broker failed."""

    code = "queue"


class BrokerConnectionError(QueueError, ConnectionError):
    """The broker (Redis) does not answer or refuses the credentials."""

    code = "broker_connection"


class BrokerPermissionError(BrokerConnectionError):
    """The Redis user lacks a permission (an ACL command or key) the server needs."""

    code = "broker_permission"


class QueueFullError(QueueError):
    """The input stream holds as many unprocessed records as it is allowed to, or Redis is at
    its maxmemory."""

    code = "queue_full"


class UriInUseError(QueueError):
    """A record was sent with a uri whose earlier record is still queued or whose result waits
    to be fetched: the two would share one result key."""

    code = "uri_in_use"


class ResultTimeoutError(ZooServingError, TimeoutError):
    """No result arrived within the client's timeout."""

    code = "timeout"


class ServerError(ZooServingError):
    """The server is not running, failed to start, or failed on a record."""

    code = "server"


def _all_subclasses(cls: type[ZooServingError]) -> list[type[ZooServingError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[ZooServingError]] = {c.code: c for c in _all_subclasses(ZooServingError)}


def error_from_code(code: str, message: str) -> ZooServingError:
    """The exception for an error result's ``code`` (ServerError for a code we do not know)."""
    cls = _BY_CODE.get(code, ServerError)
    err = cls(message)
    if cls is ServerError and code != ServerError.code:
        err.details["code"] = code
    return err
