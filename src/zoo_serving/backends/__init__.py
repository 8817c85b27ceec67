"""Backends: the Model interface, a lazy registry of frameworks, and model-directory detection.

A backend is found by name through :data:`REGISTRY` (name -> ``module:Class``), imported only
when used; a name of the form ``package.module:Class`` loads a third-party backend.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import ConfigError, MissingDependencyError, ModelError, UnsupportedModelError
from .base import Model, ModelOptions, TensorSpec
from .detect import ModelLayout, detect_model

__all__ = [
    "REGISTRY",
    "Model",
    "ModelLayout",
    "ModelOptions",
    "TensorSpec",
    "detect_model",
    "load_model",
    "resolve_backend",
]

#: backend name -> import string of its Model class; imported lazily
REGISTRY: dict[str, str] = {
    "onnx": "zoo_serving.backends.onnx_runtime:OnnxModel",
    "torch": "zoo_serving.backends.torchscript:TorchScriptModel",
    "tensorflow": "zoo_serving.backends.tf_graph:TensorFlowModel",
    "openvino": "zoo_serving.backends.openvino_ir:OpenVinoModel",
    "bigdl": "zoo_serving.backends.bigdl:BigDLModel",
    "caffe": "zoo_serving.backends.caffe:CaffeModel",
}

#: frameworks detected but served by a later release, with the extra that will bring them
_PLANNED: dict[str, str] = {}


def resolve_backend(name: str) -> type[Model]:
    """The Model class for a backend name or a ``module:Class`` import string."""
    target = REGISTRY.get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        if name in _PLANNED:
            raise UnsupportedModelError(
                f"the {name} backend is not in this release of zoo_serving; "
                "convert the model to ONNX or TorchScript to serve it now",
                backend=name,
            )
        raise ConfigError(
            f"model.backend: unknown backend {name!r}; expected one of "
            f"{', '.join(sorted(REGISTRY))} or an import string module:Class",
            key="model.backend",
            value=name,
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except MissingDependencyError:
        raise
    except ImportError as exc:
        raise ConfigError(
            f"model.backend: cannot import {module_name!r}: {exc}", key="model.backend", value=name
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(
            f"model.backend: {target!r} is not a zoo_serving Model subclass",
            key="model.backend",
            value=name,
        )
    return cls


def load_model(
    path: str | os.PathLike[str],
    backend: str | None = None,
    options: ModelOptions | None = None,
    **option_values: Any,
) -> Model:
    """Detect (unless ``backend`` is given), construct and load the model at ``path``.

    The Model gets the path of the model's main file (the ``.onnx``, ``.prototxt``, ``.xml``,
    ``saved_model.pb``, ...); its other files sit beside it.

    Example::

        model = load_model("models/resnet18", threads=2)
        model.predict({"input": batch})
    """
    if options is None:
        options = ModelOptions(**option_values)
    if backend is None:
        layout = detect_model(path)
        backend, main = layout.backend, str(layout.main)
    else:  # the model's main file where detection finds one, else the path as given
        try:
            main = str(detect_model(path).main)
        except ModelError:
            main = os.fspath(path)
    if backend == "onnx":  # params.engine_type picks ONNX Runtime or OpenVINO
        from .onnx_engine import onnx_model

        return onnx_model(main, options).load()
    return resolve_backend(backend)(main, options).load()
