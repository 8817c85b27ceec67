"""BigDL models (``*.model``, a protobuf ``BigDLModule``): converted to ONNX on load, then run by
the engine ``params.engine_type`` picks (ONNX Runtime for ``mklblas``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np

from ..base import Model

log = logging.getLogger(__name__)


class BigDLModel(Model):
    """A BigDL ``*.model`` file, converted to ONNX by :func:`.convert.convert`.

    The input's record shape is ``data.shape`` (``options.input_shape``); it must fit the
    model's first module, e.g. 1,28,28 or 784 for a LeNet that starts with Reshape(1,28,28).
    Outputs are what the BigDL model returns (log-probabilities after a LogSoftMax).

    Example::

        with BigDLModel("lenet/bigdl_lenet.model", ModelOptions(input_shape=(1, 28, 28))) as m:
            logp = m.predict({"input": batch})["output"]
    """

    backend = "bigdl"

    def _load(self) -> None:
        from ..onnx_engine import onnx_model as engine_for
        from .convert import convert

        start = time.monotonic()
        onnx_model = convert(self.path, tuple(self.options.input_shape))
        # params.engine_type picks ONNX Runtime (mklblas) or OpenVINO for the converted model
        data = onnx_model.SerializeToString()
        self._engine: Model = engine_for(data, self.options, name=self.path).load()
        self._inputs = self._engine.inputs
        self._outputs = self._engine.outputs
        log.info(
            "converted BigDL model %s to ONNX (%d nodes) in %.2f s",
            self.path,
            len(onnx_model.graph.node),
            time.monotonic() - start,
        )

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # the engine's own step, so a failure is reported as this bigdl model's
        return self._engine._predict(batch)

    def close(self) -> None:
        engine: Model | None = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()  # frees the session; a later load() makes a new engine
        super().close()
