"""``params.engine_type`` for ONNX models: which engine runs an ONNX model, from a file or from
bytes (the Caffe and BigDL backends convert to ONNX in memory).

==========  ==============================================================
mklblas     ONNX Runtime's CPU execution provider (the default)
openvino    OpenVINO's CPU plugin (:class:`~.openvino_ir.OpenVinoModel`)
==========  ==============================================================
"""

from __future__ import annotations

from ..config import ENGINES
from ..errors import ConfigError, ModelError
from .base import Model, ModelOptions
from .onnx_runtime import OnnxModel
from .openvino_ir import OpenVinoModel


def onnx_model(source: str | bytes, options: ModelOptions, name: str = "model") -> Model:
    """The Model (not yet loaded) that runs an ONNX model with ``options.engine_type``.

    Args:
        source: the path of an ``.onnx`` file, or the bytes of a serialized ONNX model.
        options: the model options; ``engine_type`` picks the engine.
        name: stands in for the path in logs and errors when ``source`` is bytes.

    Example::

        model = onnx_model(proto.SerializeToString(), options, name="lenet.caffemodel").load()
    """
    engine = options.engine_type
    if engine not in ENGINES:
        raise ConfigError(
            f"params.engine_type: expected one of {', '.join(ENGINES)}, got {engine!r}",
            key="params.engine_type",
            value=engine,
        )
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if engine == "openvino":
            return OpenVinoModel.from_onnx_bytes(data, options, name=name)
        return OnnxModel.from_bytes(data, options, name)
    if not isinstance(source, str):
        raise ModelError(
            f"an ONNX model is a path (str) or serialized bytes, got {type(source).__name__}"
        )
    if engine == "openvino":
        return OpenVinoModel(source, options)
    return OnnxModel(source, options)
