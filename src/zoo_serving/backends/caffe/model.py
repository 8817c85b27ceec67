"""Caffe models (``*.prototxt`` + ``*.caffemodel``), converted to ONNX by our own converter
(:mod:`.convert`) and run by ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import (
    AmbiguousModelError,
    IncompleteModelError,
    MissingDependencyError,
    ModelNotFoundError,
)
from ..base import Model, ModelOptions


def find_caffe_files(path: str | Path) -> tuple[Path, Path]:
    """(prototxt, caffemodel) for a ``.prototxt`` path (or a directory holding one): the
    ``.caffemodel`` of the same name beside it, else the only one there.

    Raises:
        ModelNotFoundError: no prototxt at ``path``.
        IncompleteModelError: no ``.caffemodel`` beside it.
        AmbiguousModelError: several prototxts, or several ``.caffemodel`` files and none with
            the prototxt's name.
    """
    given = Path(path)
    if given.is_dir():
        found = sorted(given.glob("*.prototxt"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            error = AmbiguousModelError if found else ModelNotFoundError
            raise error(
                f"expected one *.prototxt in {str(given)!r}, found {names}", path=str(given)
            )
        given = found[0]
    if not given.is_file():
        raise ModelNotFoundError(f"Caffe net definition {str(given)!r} does not exist")
    same_name = given.with_suffix(".caffemodel")
    if same_name.is_file():
        return given, same_name
    weights = sorted(given.parent.glob("*.caffemodel"))
    if len(weights) == 1:
        return given, weights[0]
    if not weights:
        raise IncompleteModelError(
            f"caffe model is incomplete: {given.name} has no *.caffemodel beside it in "
            f"{str(given.parent)!r}",
            path=str(given),
        )
    raise AmbiguousModelError(
        f"several *.caffemodel files beside {given.name} ({', '.join(w.name for w in weights)}) "
        f"and none named {same_name.name}; keep one, or name it after the prototxt",
        path=str(given),
    )


def _engine_model(onnx_model: bytes, options: ModelOptions, name: str) -> Model:
    """A loaded Model running the converted ONNX on the engine ``params.engine_type`` picks:
    ONNX Runtime (mklblas) or OpenVINO (openvino)."""
    from ..onnx_engine import onnx_model as engine_for

    return engine_for(onnx_model, options, name=name).load()


class CaffeModel(Model):
    """A Caffe net: ``path`` is its ``.prototxt``; the ``.caffemodel`` sits beside it.

    The input shape is the net's own (``input`` / ``input_shape`` / ``input_dim`` or an Input
    layer); a net that declares none takes ``data.shape`` (``options.input_shape``). The batch
    dimension is always free.
    """

    backend = "caffe"
    image_layout = "CHW"

    def __init__(self, path: str, options: ModelOptions | None = None) -> None:
        super().__init__(path, options)
        self._engine: Model | None = None

    def _load(self) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "the caffe backend needs onnx and onnxruntime: pip install 'zoo-serving[onnx]'"
            ) from None
        from .convert import convert_net, needs_input_shape, read_net

        prototxt, caffemodel = find_caffe_files(self.path)
        net = read_net(prototxt, caffemodel)
        shape = tuple(self.options.input_shape) if needs_input_shape(net) else None
        converted = convert_net(net, shape)
        self._engine = _engine_model(converted.SerializeToString(), self.options, self.path)
        self._inputs = self._engine.inputs
        self._outputs = self._engine.outputs

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._engine is not None  # load() ran: predict() checks
        return self._engine.predict(batch)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        super().close()
