"""ONNX models run by ONNX Runtime on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UnsupportedModelError
from .base import Model, ModelOptions, TensorSpec

# ONNX Runtime type strings -> numpy dtypes
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _spec(arg: Any) -> TensorSpec:
    """TensorSpec of an onnxruntime NodeArg (symbolic dims become None)."""
    if arg.type not in _ORT_TYPES:
        raise UnsupportedModelError(
            f"ONNX input/output {arg.name!r} has type {arg.type}, which zoo_serving cannot feed"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(_ORT_TYPES[arg.type]), shape)


class OnnxModel(Model):
    """An ``*.onnx`` model in an ONNX Runtime ``InferenceSession``."""

    backend = "onnx"

    def __init__(self, path: str, options: ModelOptions | None = None) -> None:
        super().__init__(path, options)
        self._model_bytes: bytes | None = None

    @classmethod
    def from_bytes(
        cls, data: bytes, options: ModelOptions | None = None, name: str = "model"
    ) -> OnnxModel:
        """A model from serialized ONNX bytes (converters build them in memory); ``name``
        stands in for the path in logs and errors."""
        model = cls(name, options)
        model._model_bytes = bytes(data)
        return model

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError(
                "the onnx backend needs onnxruntime: pip install 'zoo-serving[onnx]'"
            ) from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        source = self._model_bytes if self._model_bytes is not None else self.path
        self._session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(batch))
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None
        super().close()
