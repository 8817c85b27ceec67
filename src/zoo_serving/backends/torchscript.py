"""TorchScript models (``*.pt`` / ``*.pth``) run by PyTorch on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, ModelError
from .base import Model, TensorSpec


class TorchScriptModel(Model):
    """A TorchScript module from ``torch.jit.save``.

    TorchScript keeps no input shapes, so each input is taken as float32 of shape
    ``data.shape`` (C,H,W for images) with a free batch dimension.
    """

    backend = "torch"

    def _load(self) -> None:
        try:
            import torch
        except ImportError:
            raise MissingDependencyError(
                "the torch backend needs PyTorch: pip install 'zoo-serving[torch]'"
            ) from None
        self._torch = torch
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        try:
            self._module = torch.jit.load(self.path, map_location="cpu").eval()
        except Exception as exc:
            raise ModelError(
                f"{self.path} is not a TorchScript file (save it with torch.jit.save): {exc}"
            ) from exc
        args = [a.name for a in self._module.forward.schema.arguments[1:]]  # [0] is self
        shape = (None, *self.options.input_shape)
        self._inputs = [TensorSpec(name, np.dtype(np.float32), shape) for name in args]
        self._outputs = []  # known after the first run (warm-up)

    @property
    def outputs(self) -> list[TensorSpec]:
        self._require_loaded()
        return self._outputs

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(batch[spec.name])) for spec in self._inputs]
        with torch.inference_mode():
            result = self._module(*args)
        outputs = _flatten(result)
        if not self._outputs:
            self._outputs = [
                TensorSpec(name, arr.dtype, (None, *arr.shape[1:])) for name, arr in outputs.items()
            ]
        return outputs

    def close(self) -> None:
        self._module = None
        super().close()


def _flatten(result: Any) -> dict[str, np.ndarray]:
    if isinstance(result, dict):
        return {str(k): v.detach().numpy() for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return {f"output_{i}": v.detach().numpy() for i, v in enumerate(result)}
    return {"output": result.detach().numpy()}
