"""OpenVINO on the CPU: an IR (``*.xml`` + ``*.bin``), or an ONNX model (file or bytes) run
through OpenVINO instead of ONNX Runtime (``params.engine_type: openvino``).

The model is compiled once in :meth:`OpenVinoModel.load`:

* the batch dimension is made free (``-1``) where the model fixes it, so any batch up to
  ``params.batch_size`` runs, a partial last batch included. Where the model cannot take that
  (a reshape fails, or an output keeps a fixed first dimension, as with a hard-coded
  ``Reshape``), the fixed batch is kept and reported through :attr:`TensorSpec.max_batch`, and
  the worker pads or splits batches to fit;
* ``INFERENCE_NUM_THREADS`` is ``params.threads`` when that is above 0 (else OpenVINO's own
  choice: every core);
* ``PERFORMANCE_HINT`` is ``LATENCY``: one stream that puts every thread on the one batch in
  flight. The worker runs one batch at a time, and batching is where its throughput comes from;
  the ``THROUGHPUT`` hint splits the cores into streams that a single request cannot use (see
  ``docs/engines.md`` for the figures);
* ``INFERENCE_PRECISION_HINT`` is ``f32`` unless ``precision="bf16"`` is asked for. OpenVINO
  picks bf16 by itself on CPUs with AMX or AVX-512 BF16, which is much faster there but does
  not give the framework's answers to 1e-4.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    IncompleteModelError,
    InferenceError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from .base import Model, ModelOptions, TensorSpec

log = logging.getLogger(__name__)

DEVICE = "CPU"
#: inference precisions a caller may ask for
PRECISIONS = ("f32", "bf16", "f16")

# OpenVINO element type names -> numpy dtypes (the types zoo_serving can feed and return)
_OV_TYPES = {
    "f32": np.float32,
    "f64": np.float64,
    "f16": np.float16,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "boolean": np.bool_,
}


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(
            "the openvino backend (and params.engine_type: openvino) needs OpenVINO: "
            "pip install 'zoo-serving[openvino]'"
        ) from None
    return openvino


@lru_cache(maxsize=1)
def _core() -> Any:
    """One ``openvino.Core`` per process, as OpenVINO recommends (plugins are per Core)."""
    return _import_openvino().Core()


class OpenVinoModel(Model):
    """An OpenVINO IR (the ``.xml``, its ``.bin`` beside it) or an ``.onnx`` file, compiled for
    the CPU.

    Args:
        path: the ``.xml`` of an IR, or an ``.onnx`` file (any format OpenVINO reads works).
        options: threads and the rest; ``engine_type`` does not matter here.
        precision: the CPU's inference precision, ``"f32"`` (default: the framework's answers)
            or ``"bf16"`` / ``"f16"`` (faster where the CPU has them, less exact).

    Example::

        model = OpenVinoModel("models/resnet/resnet.xml", ModelOptions(threads=2)).load()
        out = model.predict({"input": batch})                # any batch size

        onnx_bytes = onnx_model_proto.SerializeToString()   # e.g. from the Caffe converter
        model = OpenVinoModel.from_onnx_bytes(onnx_bytes, options, name="lenet.caffemodel")
    """

    backend = "openvino"
    image_layout = "CHW"
    #: the worker runs one batch at a time: one stream with every thread on it serves it fastest
    performance_hint = "LATENCY"

    def __init__(
        self, path: str, options: ModelOptions | None = None, *, precision: str = "f32"
    ) -> None:
        super().__init__(path, options)
        if precision not in PRECISIONS:
            raise ConfigError(
                f"openvino precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}",
                key="precision",
                value=precision,
            )
        self.precision = precision
        self._onnx_bytes: bytes | None = None
        self._compiled: Any = None
        self._local = threading.local()  # one InferRequest per calling thread

    @classmethod
    def from_onnx_bytes(
        cls,
        data: bytes,
        options: ModelOptions | None = None,
        name: str = "model",
        *,
        precision: str = "f32",
    ) -> OpenVinoModel:
        """A model for a serialized ONNX ``ModelProto`` held in memory (not yet loaded).

        ``name`` stands in for the path in logs and errors. The ONNX model must keep its
        weights inside (no external data files).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ModelError(
                f"from_onnx_bytes: expected the bytes of a serialized ONNX model, got "
                f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
            )
        model = cls(name, options, precision=precision)
        model._onnx_bytes = bytes(data)
        return model

    # ------------------------------------------------------------------ lifecycle

    def _load(self) -> None:
        ov = _import_openvino()
        model = self._read()
        fixed = _free_batch(ov, model)
        if fixed:  # the reshape left the model half-changed: start again from the file
            log.info(
                "%s keeps its fixed batch dimension (%s); batches are padded or split to fit",
                self.path,
                fixed,
            )
            model = self._read()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        if self.options.threads > 0:
            config["INFERENCE_NUM_THREADS"] = self.options.threads
        try:
            self._compiled = _core().compile_model(model, DEVICE, config)
        except Exception as exc:
            raise ModelError(
                f"OpenVINO cannot compile {self.path} for {DEVICE} with {config}: {exc}"
            ) from exc
        self._local = threading.local()
        # an input of unknown rank takes data.shape per record, as for TorchScript
        ins, outs = self._compiled.inputs, self._compiled.outputs
        per_record = (None, *self.options.input_shape)
        self._inputs = [
            _spec(p, _name(p, "input", i, len(ins)), per_record) for i, p in enumerate(ins)
        ]
        self._outputs = [
            _spec(p, _name(p, "output", i, len(outs)), (None,)) for i, p in enumerate(outs)
        ]
        log.info(
            "compiled %s for %s: threads=%s hint=%s precision=%s batch=%s",
            self.path,
            DEVICE,
            self.compiled_property("INFERENCE_NUM_THREADS"),
            self.performance_hint,
            self.precision,
            self._inputs[0].max_batch if self._inputs else None,
        )

    def _read(self) -> Any:
        """The ``openvino.Model`` from the ONNX bytes, the IR or the model file."""
        core = _core()
        if self._onnx_bytes is not None:
            try:
                return core.read_model(self._onnx_bytes)
            except Exception as exc:
                raise ModelError(
                    f"OpenVINO cannot read the ONNX model {self.path!r} "
                    f"({len(self._onnx_bytes)} bytes): {exc}"
                ) from exc
        path = Path(self.path)
        if not path.is_file():
            raise ModelNotFoundError(
                f"model.path {self.path!r} is not a file; point it at the .xml of an OpenVINO IR "
                "(its .bin beside it) or at an .onnx file",
                path=self.path,
            )
        args = [str(path)]
        if path.suffix.lower() == ".xml":
            weights = _weights(path)
            if weights is None:
                raise IncompleteModelError(
                    f"openvino model is incomplete: {path.name} has no "
                    f"{path.with_suffix('.bin').name} beside it",
                    path=self.path,
                )
            args.append(str(weights))
        try:
            return core.read_model(*args)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot read {self.path}: {exc}") from exc

    def close(self) -> None:
        self._compiled = None
        self._local = threading.local()
        super().close()

    def compiled_property(self, name: str) -> Any:
        """A property of the compiled model, e.g. ``"INFERENCE_NUM_THREADS"``."""
        if self._compiled is None:
            raise ModelError(f"model {self.path} is not loaded; call load() first")
        return self._compiled.get_property(name)

    # ------------------------------------------------------------------ inference

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._compiled.create_infer_request()
            self._local.request = request
        feeds: dict[int, np.ndarray] = {}
        for index, spec in enumerate(self._inputs):
            array = batch.get(spec.name)
            if array is None:
                raise InferenceError(
                    f"openvino model {self.path}: input {spec.name!r} is not in the batch "
                    f"(got {sorted(batch)}); it takes {[s.name for s in self._inputs]}"
                )
            feeds[index] = array
        # share_inputs: no copy of the (contiguous) batch; share_outputs=False: the results
        # are copies that the next inference on this request cannot overwrite
        result = request.infer(feeds, share_inputs=True, share_outputs=False)
        return {spec.name: result[index] for index, spec in enumerate(self._outputs)}


def _weights(xml: Path) -> Path | None:
    """The IR's ``.bin``: ``name.bin`` beside ``name.xml``, or, as detection pairs them, the
    only ``.bin`` beside the only ``.xml``."""
    same = xml.with_suffix(".bin")
    if same.is_file():
        return same
    siblings = [f for f in xml.parent.iterdir() if f.is_file()]
    xmls = [f for f in siblings if f.suffix.lower() == ".xml"]
    bins = [f for f in siblings if f.suffix.lower() == ".bin"]
    return bins[0] if len(xmls) == 1 and len(bins) == 1 else None


def _free_batch(ov: Any, model: Any) -> str:
    """Make a fixed first dimension of every input free; "" when that worked (or was not
    needed), else why the model keeps its fixed batch."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() > 0 and shape[0].is_static:
            dims = list(shape)
            dims[0] = ov.Dimension(-1)
            shapes[port] = ov.PartialShape(dims)
    if not shapes:
        return ""
    before = ", ".join(str(port.get_partial_shape()) for port in shapes)
    try:
        model.reshape(shapes)
    except Exception as exc:
        return f"input shapes {before}; reshape failed: {str(exc).strip().splitlines()[-1]}"
    for port in model.outputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_static:
            return f"input shapes {before}; with a free batch an output has shape {shape}"
    return ""


def _name(port: Any, kind: str, index: int, count: int) -> str:
    """The port's tensor name; ``input``/``output`` (``_<i>`` when several) for nameless ones."""
    if port.get_names():
        return str(port.any_name)
    return kind if count == 1 else f"{kind}_{index}"


def _spec(port: Any, name: str, unknown: tuple[int | None, ...]) -> TensorSpec:
    """TensorSpec of a compiled-model port (dynamic dimensions become None; a port of unknown
    rank gets the shape ``unknown``)."""
    type_name = port.get_element_type().get_type_name()
    if type_name not in _OV_TYPES:
        raise UnsupportedModelError(
            f"OpenVINO input/output {name!r} has element type {type_name}, which zoo_serving "
            f"cannot feed or return; supported: {', '.join(_OV_TYPES)}"
        )
    shape = port.get_partial_shape()
    dims: tuple[int | None, ...]
    if shape.rank.is_dynamic:
        dims = unknown
    else:
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
    return TensorSpec(name, np.dtype(_OV_TYPES[type_name]), dims, ranked=shape.rank.is_static)
