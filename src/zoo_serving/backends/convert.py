"""Converting Caffe and BigDL models to ONNX files (``zoo-serve convert``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError
from .detect import detect_model

Progress = Callable[[int, int], None]


def to_onnx(
    model_path: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
) -> Any:
    """The ``onnx.ModelProto`` of the Caffe or BigDL model at ``model_path``.

    Raises:
        UnsupportedModelError: the path holds another kind of model, or a layer / module
            the converter does not know (named in the message).
    """
    layout = detect_model(model_path)
    if layout.backend == "caffe":
        from .caffe.convert import convert as convert_caffe

        return convert_caffe(layout.main, layout.files["caffemodel"], input_shape, progress)
    if layout.backend == "bigdl":
        from .bigdl.convert import convert as convert_bigdl

        return convert_bigdl(layout.main, input_shape, progress)
    raise UnsupportedModelError(
        f"{os.fspath(model_path)!r} holds a model for the {layout.backend} backend "
        f"({layout.main.name}); "
        "zoo-serve convert takes Caffe (.prototxt + .caffemodel) or BigDL (.model) models"
    )


def convert_to_file(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Convert and write ``out`` (an ONNX file); returns its path."""
    import onnx

    model = to_onnx(model_path, input_shape, progress)
    onnx.checker.check_model(model)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path
