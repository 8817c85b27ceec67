"""Caffe's element-wise, normalising and shape layers as ONNX: ReLU, PReLU, Sigmoid, TanH,
Dropout, BatchNorm, Scale, Eltwise, Concat, Flatten, Reshape and Softmax."""

from __future__ import annotations

import math

import numpy as np

from .graph import Dims, Graph, LayerCall, axis_index, dims_text

# caffe.proto EltwiseParameter.EltwiseOp
_PROD, _SUM, _MAX = 0, 1, 2


def relu(g: Graph, call: LayerCall) -> None:
    x = call.single()
    slope = float(call.layer.relu_param.negative_slope)
    if slope:
        g.op("LeakyRelu", [x], g.shape(x), out=call.out, alpha=slope)
    else:
        g.op("Relu", [x], g.shape(x), out=call.out)


def sigmoid(g: Graph, call: LayerCall) -> None:
    x = call.single()
    g.op("Sigmoid", [x], g.shape(x), out=call.out)


def tanh(g: Graph, call: LayerCall) -> None:
    x = call.single()
    g.op("Tanh", [x], g.shape(x), out=call.out)


def dropout(g: Graph, call: LayerCall) -> None:
    """Caffe scales at training time, so at inference Dropout passes its input through."""
    x = call.single()
    g.op("Identity", [x], g.shape(x), out=call.out)


def _channels(call: LayerCall, dims: Dims) -> int:
    if len(dims) < 2:
        raise call.error(f"needs a blob with channels at axis 1, got {dims_text(dims)}")
    return int(dims[1] or 0)


def prelu(g: Graph, call: LayerCall) -> None:
    """One slope per channel (or one for all: channel_shared), broadcast over the rest."""
    x = call.single()
    dims = g.shape(x)
    channels = _channels(call, dims)
    if call.layer.prelu_param.channel_shared:
        slope = call.blob(0, "slope", (1,))
    else:
        slope = call.blob(0, "slopes", (channels,)).reshape((channels,) + (1,) * (len(dims) - 2))
    g.op("PRelu", [x, g.const(call.hint("slope"), slope)], dims, out=call.out)


def batch_norm(g: Graph, call: LayerCall) -> None:
    """Inference with the stored statistics: Caffe keeps mean and variance multiplied by a
    factor (blob 2), which a zero factor means "no statistics" (mean and variance 0)."""
    x = call.single()
    dims = g.shape(x)
    channels = _channels(call, dims)
    mean = call.blob(0, "mean", (channels,)).astype(np.float64)
    var = call.blob(1, "variance", (channels,)).astype(np.float64)
    factor = float(call.blob(2, "moving-average factor", (1,))[0])
    scale = 0.0 if factor == 0 else 1.0 / factor
    inputs = [
        x,
        g.const(call.hint("gamma"), np.ones(channels)),
        g.const(call.hint("beta"), np.zeros(channels)),
        g.const(call.hint("mean"), mean * scale),
        g.const(call.hint("variance"), var * scale),
    ]
    eps = float(call.layer.batch_norm_param.eps)
    g.op("BatchNormalization", inputs, dims, out=call.out, epsilon=eps)


def scale(g: Graph, call: LayerCall) -> None:
    """x * scale (+ bias), the learned blobs covering axes [axis, axis + num_axes)."""
    if len(call.inputs) != 1:
        raise call.unsupported("the two-bottom form (scale from a second blob) does not convert")
    x = call.single()
    dims = g.shape(x)
    param = call.layer.scale_param
    rank = len(dims)
    axis = axis_index(call, param.axis, rank) if param.num_axes != 0 else rank
    end = rank if param.num_axes == -1 else axis + int(param.num_axes)
    if param.num_axes < -1 or end > rank:
        raise call.error(f"num_axes {param.num_axes} from axis {param.axis} exceeds {rank} axes")
    covered = tuple(int(d or 0) for d in dims[axis:end])
    trailing = (1,) * (rank - end)
    factor = call.blob(0, "scale", covered).reshape(covered + trailing)
    product_out = None if param.bias_term else call.out
    y = g.op(
        "Mul",
        [x, g.const(call.hint("scale"), factor)],
        dims,
        out=product_out,
        hint=call.hint("scaled"),
    )
    if param.bias_term:
        bias = call.blob(1, "bias", covered).reshape(covered + trailing)
        g.op("Add", [y, g.const(call.hint("bias"), bias)], dims, out=call.out)


def eltwise(g: Graph, call: LayerCall) -> None:
    """SUM (with per-bottom coefficients), PROD or MAX of same-shaped bottoms."""
    param = call.layer.eltwise_param
    if len(call.outputs) != 1 or len(call.inputs) < 2:
        raise call.error(
            f"takes two or more bottoms and one top, got {len(call.inputs)} and {len(call.outputs)}"
        )
    dims = g.shape(call.inputs[0])
    for name in call.inputs[1:]:
        if g.shape(name) != dims:
            shapes = ", ".join(dims_text(g.shape(n)) for n in call.inputs)
            raise call.error(f"bottoms must have the same shape, got {shapes}")
    coeffs = list(param.coeff)
    if coeffs and param.operation != _SUM:
        raise call.error("coeff is only for the SUM operation")
    if param.operation == _MAX:
        g.op("Max", call.inputs, dims, out=call.out)
    elif param.operation == _PROD:
        acc = call.inputs[0]
        for i, name in enumerate(call.inputs[1:], start=2):
            last = i == len(call.inputs)
            acc = g.op(
                "Mul", [acc, name], dims, out=call.out if last else None, hint=call.hint("prod")
            )
    else:
        if coeffs and len(coeffs) != len(call.inputs):
            raise call.error(f"{len(coeffs)} coeff values for {len(call.inputs)} bottoms")
        terms = []
        for name, c in zip(call.inputs, coeffs or [1.0] * len(call.inputs)):
            if c != 1.0:
                name = g.op(
                    "Mul", [name, g.const(call.hint("coeff"), c)], dims, hint=call.hint("term")
                )
            terms.append(name)
        g.op("Sum", terms, dims, out=call.out)


def concat(g: Graph, call: LayerCall) -> None:
    param = call.layer.concat_param
    if len(call.outputs) != 1 or not call.inputs:
        raise call.error(f"takes bottoms and one top, got {len(call.outputs)} tops")
    shapes = [g.shape(name) for name in call.inputs]
    rank = len(shapes[0])
    given = (
        param.concat_dim
        if param.HasField("concat_dim") and not param.HasField("axis")
        else param.axis
    )
    axis = axis_index(call, int(given), rank)
    rest = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(rest) != 1 or any(len(s) != rank for s in shapes):
        listed = ", ".join(dims_text(s) for s in shapes)
        raise call.error(f"bottoms differ outside axis {axis}: {listed}")
    total = sum(int(s[axis] or 0) for s in shapes)
    out = shapes[0][:axis] + (total,) + shapes[0][axis + 1 :]
    g.op("Concat", call.inputs, out, out=call.out, axis=axis)


def _reshape(g: Graph, call: LayerCall, x: str, out: Dims) -> None:
    """Reshape keeping the batch (ONNX 0 copies the input's dimension at that index)."""
    target = g.ints(call.hint("shape"), [0, *(int(d or 0) for d in out[1:])])
    g.op("Reshape", [x, target], out, out=call.out)


def flatten(g: Graph, call: LayerCall) -> None:
    """Axes [axis, end_axis] become one; the others stay."""
    x = call.single()
    dims = g.shape(x)
    param = call.layer.flatten_param
    start = axis_index(call, param.axis, len(dims))
    end = axis_index(call, param.end_axis, len(dims), "end_axis")
    if end < start:
        raise call.error(f"end_axis {param.end_axis} comes before axis {param.axis}")
    merged = math.prod(int(d or 0) for d in dims[start : end + 1])
    _reshape(g, call, x, (*dims[:start], merged, *dims[end + 1 :]))


def reshape(g: Graph, call: LayerCall) -> None:
    """Caffe's Reshape: ``dim: 0`` copies the bottom's dimension, one ``dim: -1`` is inferred,
    and ``axis`` / ``num_axes`` pick the bottom axes the new shape replaces. Where the new shape
    covers the batch axis, its first value stands for the batch (0, -1, or the net's batch)."""
    x = call.single()
    dims = g.shape(x)
    param = call.layer.reshape_param
    rank = len(dims)
    spec = [int(d) for d in param.shape.dim]
    start = int(param.axis) if param.axis >= 0 else rank + int(param.axis) + 1
    end = rank if param.num_axes == -1 else start + int(param.num_axes)
    if not 0 <= start <= end <= rank or param.num_axes < -1:
        raise call.error(f"axis {param.axis} / num_axes {param.num_axes} do not fit {rank} axes")
    if start == 0:
        if end == 0 or not spec:
            raise call.unsupported("the new shape must start with the batch dimension")
        if spec[0] not in (0, -1, g.batch):
            raise call.unsupported(
                f"the new shape sets the batch dimension to {spec[0]} (the net's batch is "
                f"{g.batch}); the converted model keeps the batch dimension free"
            )
        spec, start = spec[1:], 1
    if spec.count(-1) > 1 or any(d < -1 for d in spec):
        raise call.error(f"shape {list(param.shape.dim)}: at most one -1 and no other negatives")
    resolved: list[int] = []
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= rank:
                raise call.error(
                    f"dim 0 at position {i} copies axis {start + i} of a {rank}-D blob"
                )
            d = int(dims[start + i] or 0)
        resolved.append(d)
    count = math.prod(int(d or 0) for d in dims[start:end])
    known = math.prod(d for d in resolved if d != -1)
    if -1 in resolved:
        if known == 0 or count % known:
            raise call.error(f"cannot infer -1 in {spec}: {count} values over {known}")
        resolved[resolved.index(-1)] = count // known
    if math.prod(resolved) != count:
        raise call.error(
            f"shape {list(param.shape.dim)} holds {math.prod(resolved)} values per record, the "
            f"bottom {dims_text(dims)} has {count} on the replaced axes"
        )
    _reshape(g, call, x, (*dims[:start], *resolved, *dims[end:]))


def softmax(g: Graph, call: LayerCall) -> None:
    x = call.single()
    dims = g.shape(x)
    axis = axis_index(call, call.layer.softmax_param.axis, len(dims))
    g.op("Softmax", [x], dims, out=call.out, axis=axis)


#: Caffe layer type -> converter
HANDLERS = {
    "ReLU": relu,
    "PReLU": prelu,
    "Sigmoid": sigmoid,
    "TanH": tanh,
    "Dropout": dropout,
    "BatchNorm": batch_norm,
    "Scale": scale,
    "Eltwise": eltwise,
    "Concat": concat,
    "Flatten": flatten,
    "Reshape": reshape,
    "Softmax": softmax,
}
