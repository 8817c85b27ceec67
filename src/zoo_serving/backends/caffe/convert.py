"""Caffe (``*.prototxt`` + ``*.caffemodel``) to ONNX.

The net definition (protobuf text) and the trained weights (protobuf binary) are both read into
``caffe_pb2.NetParameter``; weights are matched to layers by name, as Caffe does. Each layer
becomes ONNX nodes (:mod:`.layers`, :mod:`.layers_basic`); the ONNX model has opset 17,
the net's input blob(s) as inputs with a free batch dimension ``N``, and the blobs no layer
consumes as outputs.

Example::

    model = convert(Path("deploy.prototxt"), Path("weights.caffemodel"))
    onnx.save(model, "net.onnx")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError, UnsupportedModelError
from . import caffe_pb2 as _caffe_pb2
from .graph import Graph, LayerCall, dims_text
from .layers import HANDLERS as _SPATIAL
from .layers_basic import HANDLERS as _BASIC

log = logging.getLogger(__name__)

pb2: Any = _caffe_pb2  # generated code: its classes are built at import time

OPSET = 17
IR_VERSION = 8  # what onnxruntime >= 1.14 accepts
Progress = Callable[[int, int], None]

#: Caffe layer type -> converter (``Input`` is handled by the converter itself)
HANDLERS: dict[str, Callable[[Graph, LayerCall], None]] = {**_SPATIAL, **_BASIC}
SUPPORTED_TYPES = sorted([*HANDLERS, "Input"])

# V1LayerParameter.LayerType names -> today's type strings (Caffe's UpgradeV1LayerType)
_V1_TYPES = {
    "CONCAT": "Concat",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "FLATTEN": "Flatten",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SOFTMAX": "Softmax",
    "TANH": "TanH",
    "DATA": "Data",
    "ACCURACY": "Accuracy",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
}
_V1_PARAMS = (
    "concat_param",
    "convolution_param",
    "dropout_param",
    "eltwise_param",
    "inner_product_param",
    "lrn_param",
    "pooling_param",
    "relu_param",
    "softmax_param",
)


@dataclass
class CaffeNet:
    """A parsed net: its layers (test phase, V1 layers upgraded) and weights by layer name."""

    net: Any  # caffe_pb2.NetParameter
    layers: list[Any]
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    source: str = ""
    #: layer name -> the dims each of its weight blobs was written with (None: no dims at all)
    dims: dict[str, list[tuple[int, ...] | None]] = field(default_factory=dict)


def read_net(prototxt: Path, caffemodel: Path) -> CaffeNet:
    """Parse the net definition and its trained weights.

    Fields of Caffe's schema that the converter does not read (fillers, learning rates, data
    sources, other forks' additions, ...) are skipped in the prototxt.

    Raises:
        ModelError: a file that is not a Caffe net / weights file.
    """
    from google.protobuf import message, text_format

    try:
        net = text_format.Parse(
            Path(prototxt).read_text(encoding="utf-8"), pb2.NetParameter(), allow_unknown_field=True
        )
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelError(f"{prototxt}: not a Caffe net definition (prototxt): {exc}") from exc
    trained = pb2.NetParameter()
    try:
        trained.ParseFromString(Path(caffemodel).read_bytes())
    except message.DecodeError as exc:
        raise ModelError(f"{caffemodel}: not a Caffe weights file (caffemodel): {exc}") from exc
    trained_layers = [layer for layer in [*trained.layer, *trained.layers] if layer.blobs]
    weights = {
        str(layer.name): [blob_array(b, f"{caffemodel} layer {layer.name!r}") for b in layer.blobs]
        for layer in trained_layers
    }
    dims = {str(layer.name): [blob_dims(b) for b in layer.blobs] for layer in trained_layers}
    layers = [_upgrade_v1(v1) for v1 in net.layers] + list(net.layer)
    layers = [layer for layer in layers if _in_test_net(layer)]
    return CaffeNet(net, layers, weights, source=str(prototxt), dims=dims)


def blob_dims(blob: Any) -> tuple[int, ...] | None:
    """The dims a BlobProto was written with: ``shape``, else the legacy
    num/channels/height/width; None when it has neither."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    return legacy if any(legacy) else None


def blob_array(blob: Any, where: str = "blob") -> np.ndarray:
    """A BlobProto's values in the shape its dims give, or flat where they do not hold them.

    BigDL's Caffe persister writes partial legacy dims (a convolution's weights as
    ``(num_output, channels / group, 0, 0)``, an InnerProduct's as ``(0, 0, 0, inputs)``) and no
    ``shape``. BigDL's own loader ignores such dims and fills a weight of the shape the layer's
    parameters give, checking only the count; here the values stay flat and the layer's
    converter shapes them the same way (:meth:`.graph.LayerCall.blob`), failing with the layer's
    name when the count does not fit either.
    """
    if len(blob.data):
        data = np.array(blob.data, dtype=np.float32)  # far faster than iterating the field
    else:
        data = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    dims = blob_dims(blob)
    if dims is None or math.prod(dims) != data.size:
        if dims is not None:
            log.debug("%s: blob dims %s do not hold its %d values", where, dims, data.size)
        return data
    return data.reshape(dims)


def _upgrade_v1(v1: Any) -> Any:
    """A V1LayerParameter (``layers { type: CONVOLUTION ... }``) as a LayerParameter."""
    enum_name = pb2.V1LayerParameter.LayerType.Name(v1.type)
    layer = pb2.LayerParameter(
        name=v1.name,
        type=_V1_TYPES.get(enum_name, enum_name),
        bottom=v1.bottom,
        top=v1.top,
        blobs=v1.blobs,
        include=v1.include,
        exclude=v1.exclude,
    )
    for name in _V1_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


def _meets(rule: Any) -> bool:
    """Caffe's StateMeetsRule for the state it tests with: phase TEST, level 0, no stages."""
    if rule.HasField("phase") and rule.phase != pb2.TEST:
        return False
    if rule.HasField("min_level") and rule.min_level > 0:
        return False
    if rule.HasField("max_level") and rule.max_level < 0:
        return False
    return not rule.stage


def _in_test_net(layer: Any) -> bool:
    if layer.include:
        return any(_meets(rule) for rule in layer.include)
    return not any(_meets(rule) for rule in layer.exclude)


def declared_inputs(net: CaffeNet) -> dict[str, tuple[int, ...] | None]:
    """Input blob -> declared shape (batch first), from ``input`` + ``input_shape`` /
    ``input_dim`` and from Input layers; None where a name comes without a shape."""
    proto = net.net
    names = list(proto.input)
    shapes: list[tuple[int, ...] | None] = [None] * len(names)
    if proto.input_shape:
        shapes = [tuple(int(d) for d in s.dim) for s in proto.input_shape]
    elif proto.input_dim:
        dims = [int(d) for d in proto.input_dim]
        if len(dims) != 4 * len(names):
            raise ModelError(
                f"{net.source}: {len(dims)} input_dim values for {len(names)} input(s); "
                "give 4 per input (num, channels, height, width)"
            )
        shapes = [tuple(dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    if len(shapes) != len(names):
        raise ModelError(f"{net.source}: {len(shapes)} input_shape for {len(names)} input(s)")
    found = dict(zip(names, shapes))
    for layer in net.layers:
        if layer.type == "Input":
            given = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
            for i, top in enumerate(layer.top):
                found[top] = given[i] if i < len(given) else (given[0] if len(given) == 1 else None)
    return found


def needs_input_shape(net: CaffeNet) -> bool:
    """True when the net does not give every input a shape (so the caller must)."""
    declared = declared_inputs(net)
    return not declared or any(shape is None for shape in declared.values())


def convert(
    prototxt: Path,
    caffemodel: Path,
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
) -> Any:
    """The ``onnx.ModelProto`` of a Caffe net and its weights.

    Args:
        prototxt: the net definition (``deploy.prototxt``).
        caffemodel: the trained weights.
        input_shape: the shape of one record (no batch dimension), e.g. ``(3, 224, 224)``: for
            a net that declares no input shape; for a net with one input it replaces the
            declared shape.
        progress: called as ``progress(done, total)`` after each layer.

    Raises:
        UnsupportedModelError: layers the converter does not know, named with their types.
        ModelError: a net that is inconsistent (shapes, weights) or has no input shape.
    """
    return convert_net(read_net(prototxt, caffemodel), input_shape, progress)


def convert_net(
    net: CaffeNet, input_shape: tuple[int, ...] | None = None, progress: Progress | None = None
) -> Any:
    """:func:`convert` for a net :func:`read_net` has read."""
    from onnx import TensorProto, helper

    _check_supported(net)
    inputs = _resolve_inputs(net, input_shape)
    batch = next(iter(inputs.values()))[0] or 1
    g = Graph(batch=batch)
    g.reserve(inputs)
    g.reserve(name for layer in net.layers for name in [*layer.bottom, *layer.top])
    current: dict[str, str] = {}
    for name, dims in inputs.items():
        g.shapes[name] = (None, *dims[1:])
        current[name] = name
    last_write = {top: i for i, layer in enumerate(net.layers) for top in layer.top}
    pending: dict[str, str] = {}  # blob -> ONNX name, for blobs no later layer has read yet
    total = len(net.layers)
    if progress is not None:
        progress(0, total)
    for i, layer in enumerate(net.layers):
        if layer.type != "Input":
            outputs = [
                top
                if last_write[top] == i and top not in inputs
                else g.fresh(f"{top}@{layer.name}")
                for top in layer.top
            ]
            _convert_layer(g, net, layer, [current[b] for b in layer.bottom], outputs)
            for bottom in layer.bottom:
                pending.pop(bottom, None)
            for top, name in zip(layer.top, outputs):
                current[top] = name
                pending.pop(top, None)
                pending[top] = name
        if progress is not None:
            progress(i + 1, total)
    if not pending:
        raise ModelError(f"{net.source}: the net has no layer whose output nothing else reads")

    def value_info(name: str) -> Any:
        dims = ["N" if d is None else d for d in g.shape(name)]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph = helper.make_graph(
        g.nodes,
        net.net.name or "caffe",
        [value_info(name) for name in inputs],
        [value_info(name) for name in pending.values()],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zoo_serving"
    )
    model.ir_version = IR_VERSION
    log.debug("converted %s: %d layers, outputs %s", net.source, total, list(pending.values()))
    return model


def _check_supported(net: CaffeNet) -> None:
    unknown = [
        layer for layer in net.layers if layer.type not in HANDLERS and layer.type != "Input"
    ]
    if unknown:
        names = ", ".join(f"{layer.name!r} ({layer.type or 'no type'})" for layer in unknown)
        raise UnsupportedModelError(
            f"{net.source}: the Caffe converter does not support layer(s) {names}; it converts "
            f"{', '.join(SUPPORTED_TYPES)}",
            layers=[str(layer.name) for layer in unknown],
        )


def _resolve_inputs(
    net: CaffeNet, input_shape: tuple[int, ...] | None
) -> dict[str, tuple[int, ...]]:
    """Input blob -> shape with batch first; blobs read before any layer writes them are the
    inputs of a net without an input declaration."""
    declared = declared_inputs(net)
    produced = set(declared)
    undeclared: list[str] = []
    for layer in net.layers:
        for bottom in layer.bottom:
            if bottom not in produced and bottom not in undeclared:
                undeclared.append(bottom)
        produced.update(layer.top)
    if declared and undeclared:
        raise ModelError(
            f"{net.source}: layers read blob(s) {', '.join(map(repr, undeclared))}, which neither "
            f"an input ({', '.join(map(repr, declared))}) nor an earlier layer produces"
        )
    if not declared:
        if len(undeclared) != 1:
            raise ModelError(
                f"{net.source}: the net declares no input, and {len(undeclared)} blobs are read "
                f"before any layer writes them ({', '.join(map(repr, undeclared))}); declare "
                "the inputs with input / input_shape or an Input layer"
            )
        declared = {undeclared[0]: None}
    if input_shape is not None:
        if len(declared) != 1:
            raise ModelError(
                f"{net.source}: an input shape {tuple(input_shape)} was given, but the net has "
                f"{len(declared)} inputs ({', '.join(map(repr, declared))})"
            )
        ((name, shape),) = declared.items()
        declared = {name: ((shape or (1,))[0], *input_shape)}
    missing = [name for name, shape in declared.items() if shape is None]
    if missing:
        raise ModelError(
            f"{net.source}: the net gives no shape for input {missing[0]!r}; set data.shape "
            "(e.g. 3,224,224) to the shape of one record"
        )
    resolved = {name: tuple(shape) for name, shape in declared.items() if shape is not None}
    for name, shape in resolved.items():
        if len(shape) < 2 or min(shape[1:]) < 1:
            raise ModelError(
                f"{net.source}: input {name!r} has shape {shape}; expected the batch first and "
                "positive dimensions after it, like (1, 3, 224, 224)"
            )
    return resolved


def _convert_layer(
    g: Graph, net: CaffeNet, layer: Any, inputs: Sequence[str], outputs: list[str]
) -> None:
    blobs = net.weights.get(str(layer.name))
    dims = net.dims.get(str(layer.name), [])
    if blobs is None:  # weights in the net definition itself
        blobs = [blob_array(b, f"{net.source} layer {layer.name!r}") for b in layer.blobs]
        dims = [blob_dims(b) for b in layer.blobs]
    call = LayerCall(layer, list(inputs), outputs, blobs, dims)
    HANDLERS[str(layer.type)](g, call)
    log.debug(
        "%s %r -> %s",
        layer.type,
        str(layer.name),
        ", ".join(f"{o} {dims_text(g.shape(o))}" for o in outputs if o in g.shapes),
    )
