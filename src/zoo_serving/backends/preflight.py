"""What can be known of a model without loading it: its backend (detected or configured), that
the backend and its framework are installed, and a fingerprint of its files.

``zoo-serve restart`` checks a model this way before it stops the running server, and a server
publishes the fingerprint with its claim on a stream, so that a second server on the stream
can tell whether it serves the same model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, ModelError
from .detect import detect_model

# backend -> (modules its framework needs, the extra that installs them); by engine for onnx
_FRAMEWORKS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnxruntime",), "onnx"),
    "torch": (("torch",), "torch"),
    "tensorflow": (("tensorflow",), "tf"),
    "openvino": (("openvino",), "openvino"),
    "caffe": (("onnx", "onnxruntime"), "onnx"),
    "bigdl": (("onnx", "onnxruntime"), "onnx"),
}
_CHUNK = 1 << 20


def backend_of(path: str | os.PathLike[str], backend: str | None = None) -> str:
    """The backend that serves the model at ``path``: ``backend`` when given, else detected.

    Raises:
        ModelError: no model, several, or half a model (as :func:`detect_model`).
    """
    return backend or detect_model(path).backend


def check_model(
    path: str | os.PathLike[str], backend: str | None = None, engine_type: str = "mklblas"
) -> str:
    """Detect the model at ``path``, import its backend and find its framework, without
    loading it; returns the backend name.

    Raises:
        ModelError: no model, several, or half a model.
        ConfigError: ``backend`` is unknown or does not import.
        MissingDependencyError: the framework is not installed (naming the extra).
    """
    from . import resolve_backend

    name = backend_of(path, backend)
    needs: tuple[str, ...]
    if backend is not None:  # a configured backend still needs a model where it points
        detect_or_exists(path)
    if name == "onnx" and engine_type == "openvino":
        needs, extra = ("openvino",), "openvino"
    elif name in _FRAMEWORKS:
        needs, extra = _FRAMEWORKS[name]
    else:  # a plug-in module:Class: importing it is all we can check
        resolve_backend(name)
        return name
    resolve_backend(name)
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"the {name} backend needs {', '.join(missing)}: pip install 'zoo-serving[{extra}]'"
        )
    return name


def detect_or_exists(path: str | os.PathLike[str]) -> None:
    """Raise the detection error when ``path`` does not exist at all."""
    if not Path(path).exists():
        detect_model(path)


def model_identity(path: str | os.PathLike[str], backend: str | None = None) -> dict[str, Any]:
    """``{"backend", "path", "sha256"}`` of the model at ``path``: the same model copied to
    another directory has the same ``sha256`` (of its files' relative names and contents).

    Raises:
        ModelError: as :func:`backend_of`, or a file that cannot be read.
    """
    root = Path(path).resolve()
    name = backend_of(root, backend)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        digest.update(b"\0")
        try:
            with open(file, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"model.path: cannot read {file}: {exc}", path=str(file)) from None
        digest.update(b"\0")
    return {"backend": name, "path": str(root), "sha256": digest.hexdigest()}
