"""ONNX for each BigDL module type: one function per type in :data:`HANDLERS`.

A handler gets the :class:`Emitter` (which collects ONNX nodes and initializers), the module and
its inputs as ``(onnx name, shape)`` pairs, batch first, with None for a dimension not known
until run time; it returns its outputs the same way (several for a table). The semantics follow
BigDL's Scala modules in evaluation mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import UnsupportedModelError
from .reader import Module

Shape = tuple[int | None, ...]
Value = tuple[str, Shape]
Handler = Callable[["Emitter", "Module", list[Value]], list[Value]]

# the model's own input and output names, kept from tensors named after BigDL modules
_RESERVED = re.compile(r"(input|output)(_\d+)?")
#: modules that may come first in a model, and the attribute naming their input channels
CHANNEL_ATTRS = {
    "SpatialConvolution": "nInputPlane",
    "SpatialBatchNormalization": "nOutput",
}


class Emitter:
    """Collects ONNX nodes and initializers with unique names; counts converted modules."""

    def __init__(
        self, reader: Any, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.reader = reader
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used: set[str] = set()
        self.total = total
        self.done = 0
        self._progress = progress

    def tick(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress(self.done, self.total)

    def fresh(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", base) or "t"
        if _RESERVED.fullmatch(base):
            base = f"bigdl.{base}"
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self._numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self._helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _one(m: Module, xs: list[Value], *ranks: int) -> Value:
    if len(xs) != 1:
        raise UnsupportedModelError(f"{m.describe()} takes one tensor, got a table of {len(xs)}")
    if ranks and len(xs[0][1]) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise UnsupportedModelError(
            f"{m.describe()} takes a {want} input (batch first), got shape {_fmt(xs[0][1])}"
        )
    return xs[0]


def _nchw(m: Module) -> None:
    if int(m.attr("format", m.attr("dataFormat", 0))) != 0:
        raise UnsupportedModelError(f"{m.describe()} uses the NHWC format; only NCHW is supported")


def _elements(shape: Shape) -> int | None:
    return None if None in shape else math.prod(d for d in shape if d is not None)


def _linear(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 2)
    weight, bias = m.params()
    if weight is None or weight.ndim != 2:
        raise UnsupportedModelError(f"{m.describe()} has no [out, in] weight")
    if x[1][1] not in (None, weight.shape[1]):
        raise UnsupportedModelError(
            f"{m.describe()} has {weight.shape[1]} inputs, given shape {_fmt(x[1])}"
        )
    inputs = [x[0], c.const(f"{m.name}.weight", weight)]
    if bias is not None and bias.size and m.attr("withBias", True):
        inputs.append(c.const(f"{m.name}.bias", bias.reshape(-1)))
    return [(c.op("Gemm", inputs, m.name, transB=1), (x[1][0], weight.shape[0]))]


def _window(
    size: int | None, k: int, s: int, p: int, ceil: bool, padded: bool
) -> tuple[int, int, int | None] | None:
    """(pad_begin, pad_end, out) along one axis by BigDL's rules; None for SAME padding of an
    unknown size; out None when the size is unknown."""
    if p == -1:  # SAME: out = ceil(size / stride), the odd padding at the end
        if size is None:
            return None
        out = -(-size // s)
        total = max(0, (out - 1) * s + k - size)
        return total // 2, total - total // 2, out
    if size is None:
        return p, p, None
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if padded and (out - 1) * s >= size + p:  # BigDL (like Torch) drops a window on padding only
        out -= 1
    return p, max(0, (out - 1) * s + k - size - p), out  # the end pad that gives exactly out


def _pool_geometry(x: Value, k: tuple, s: tuple, p: tuple, ceil: bool) -> tuple:
    """ONNX attributes (explicit pads where the sizes are known) and the output H, W."""
    padded = p[0] != 0 or p[1] != 0
    h, w = (_window(x[1][2 + i], k[i], s[i], p[i], ceil, padded) for i in (0, 1))
    attrs: dict[str, Any] = {"kernel_shape": list(k), "strides": list(s)}
    if h is None or w is None:  # SAME on unknown sizes: ONNX's SAME_UPPER is BigDL's SAME
        attrs["auto_pad"] = "SAME_UPPER"
        return attrs, (None, None)
    attrs["pads"] = [h[0], w[0], h[1], w[1]]
    if ceil and (h[2] is None or w[2] is None):  # unknown sizes: ONNX's own ceil mode
        attrs["ceil_mode"] = 1
    return attrs, (h[2], w[2])


def _conv(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 4)
    _nchw(m)
    n_in, n_out = int(m.attr("nInputPlane")), int(m.attr("nOutputPlane"))
    groups = int(m.attr("nGroup", 1))
    k = (int(m.attr("kernelH")), int(m.attr("kernelW")))
    s = (int(m.attr("strideH", 1)), int(m.attr("strideW", 1)))
    p = (int(m.attr("padH", 0)), int(m.attr("padW", 0)))
    weight, bias = m.params()
    shape = (n_out, n_in // groups, *k)  # BigDL keeps [nGroup, out/group, in/group, kH, kW]
    if weight is None or weight.size != math.prod(shape):
        got = "none" if weight is None else "x".join(map(str, weight.shape))
        raise UnsupportedModelError(
            f"{m.describe()} weight is {got}, expected {'x'.join(map(str, shape))}"
        )
    if x[1][1] not in (None, n_in):
        raise UnsupportedModelError(f"{m.describe()} takes {n_in} planes, given {_fmt(x[1])}")
    inputs = [x[0], c.const(f"{m.name}.weight", weight.reshape(shape))]
    if bias is not None and bias.size and m.attr("withBias", True):
        inputs.append(c.const(f"{m.name}.bias", bias.reshape(-1)))
    attrs, (oh, ow) = _pool_geometry(x, k, s, p, ceil=False)
    y = c.op("Conv", inputs, m.name, group=groups, **attrs)
    return [(y, (x[1][0], n_out, oh, ow))]


def _pool_args(m: Module) -> tuple:
    k = (int(m.attr("kH")), int(m.attr("kW")))
    s = (int(m.attr("dH", 1)), int(m.attr("dW", 1)))
    p = (int(m.attr("padH", 0)), int(m.attr("padW", 0)))
    return k, s, p, bool(m.attr("ceil_mode", m.attr("ceilMode", False)))


def _max_pool(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 4)
    _nchw(m)
    k, s, p, ceil = _pool_args(m)
    attrs, (oh, ow) = _pool_geometry(x, k, s, p, ceil)
    return [(c.op("MaxPool", [x[0]], m.name, **attrs), (x[1][0], x[1][1], oh, ow))]


def _avg_pool(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 4)
    _nchw(m)
    k, s, p, ceil = _pool_args(m)
    if m.attr("globalPooling", False):
        if None in x[1][2:]:
            raise UnsupportedModelError(f"{m.describe()}: global pooling needs known H and W")
        k, s, p = (x[1][2], x[1][3]), (1, 1), (0, 0)
    attrs, (oh, ow) = _pool_geometry(x, k, s, p, ceil)
    src = x[0]
    if m.attr("countIncludePad", True) and any(attrs.get("pads", ())):
        # BigDL divides by the window clipped to the declared padding, never by ceil mode's
        # extra rows: pad with zeros explicitly, then average over what is left
        hb, wb, he, we = attrs["pads"]
        he_declared = he if p[0] == -1 else min(he, p[0])
        we_declared = we if p[1] == -1 else min(we, p[1])
        pads = np.array([0, 0, hb, wb, 0, 0, he_declared, we_declared], np.int64)
        src = c.op("Pad", [src, c.const(f"{m.name}.pads", pads)], f"{m.name}.padded")
        attrs["pads"] = [0, 0, he - he_declared, we - we_declared]
    y = c.op("AveragePool", [src], m.name, count_include_pad=0, **attrs)
    if not m.attr("divide", True):
        factor = np.array(k[0] * k[1], np.float32)
        y = c.op("Mul", [y, c.const(f"{m.name}.window", factor)], f"{m.name}.sum")
    return [(y, (x[1][0], x[1][1], oh, ow))]


def _batch_norm(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 4 if m.short == "SpatialBatchNormalization" else 2)
    _nchw(m)
    n = int(m.attr("nOutput"))
    mean, var = m.attr("runningMean", None), m.attr("runningVar", None)
    weight, bias = m.params()
    weight = np.ones(n, np.float32) if weight is None or not weight.size else weight
    bias = np.zeros(n, np.float32) if bias is None or not bias.size else bias
    for what, arr in (("runningMean", mean), ("runningVar", var), ("weight", weight)):
        if arr is None or arr.size != n:
            got = "none" if arr is None else arr.size
            raise UnsupportedModelError(f"{m.describe()}: {what} has {got} values, expected {n}")
    args = [
        c.const(f"{m.name}.{w}", np.reshape(a, -1))
        for w, a in (("scale", weight), ("bias", bias), ("mean", mean), ("var", var))
    ]
    eps = float(m.attr("eps", 1e-5))
    return [(c.op("BatchNormalization", [x[0], *args], m.name, epsilon=eps), x[1])]


def _unary(op_type: str) -> Handler:
    def handler(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
        x = _one(m, xs)
        return [(c.op(op_type, [x[0]], m.name), x[1])]

    return handler


def _softmax(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 2, 3, 4)
    rank, pos = len(x[1]), int(m.attr("pos", 1))
    pos = rank + pos if pos <= 0 else pos
    # BigDL: a 2-d or 4-d input is a batch (normalise dimension pos + 1), a 1-d or 3-d one is not
    axis = pos if (rank - pos) in (1, 3) else pos - 1
    if not 0 < axis < rank:
        raise UnsupportedModelError(
            f"{m.describe()} on shape {_fmt(x[1])} normalises over dimension {axis}, "
            "the batch (BigDL reads a 3-d input as one C,H,W record)"
        )
    return [(c.op("Softmax", [x[0]], m.name, axis=axis), x[1])]


def _log_softmax(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs, 2)
    return [(c.op("LogSoftmax", [x[0]], m.name, axis=1), x[1])]


def _reshape_to(c: Emitter, m: Module, x: Value, target: list[int]) -> Value:
    shape = c.const(f"{m.name}.shape", np.array(target, np.int64))
    dims = tuple(
        x[1][0] if i == 0 and d == 0 else (None if d == -1 else d) for i, d in enumerate(target)
    )
    return c.op("Reshape", [x[0], shape], m.name), dims


def _check_records(m: Module, x: Value, sizes: list[int]) -> None:
    n, have = math.prod(sizes), _elements(x[1][1:])
    if have is not None and have != n:
        raise UnsupportedModelError(
            f"{m.describe()} makes records of {'x'.join(map(str, sizes))} ({n} values) from "
            f"input shape {_fmt(x[1])} ({have} values a record)"
        )


def _reshape(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs)
    sizes = [int(d) for d in m.attr("size")]
    if int(m.attr("batchMode", 0)) == 1:  # 0 = decide by size, 1 = never batch, 2 = always
        raise UnsupportedModelError(
            f"{m.describe()} has batchMode false: it would reshape the whole batch; "
            "re-save the model with batchMode unset or true"
        )
    _check_records(m, x, sizes)
    return [_reshape_to(c, m, x, [0, *sizes])]


def _view(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    x = _one(m, xs)
    sizes, dims = [int(d) for d in m.attr("sizes")], int(m.attr("numInputDims", 0))
    rank = len(x[1])
    if 0 < dims < rank:
        if rank - dims > 1:  # several leading dimensions become the one batch dimension
            lead = _elements(x[1][: rank - dims])
            flat = c.op("Flatten", [x[0]], f"{m.name}.flat", axis=rank - dims)
            x = (flat, (lead, _elements(x[1][rank - dims :])))
        return [_reshape_to(c, m, x, [0, *sizes])]
    if -1 not in sizes:  # BigDL: the batch is all the input's values over the view's
        y, shape = _reshape_to(c, m, x, [-1, *sizes])
        same = _elements(x[1][1:]) == math.prod(sizes)
        return [(y, (x[1][0] if same else None, *shape[1:]))]
    if sizes[0] == -1:  # BigDL views the whole tensor; a leading -1 keeps the batch in front
        return [_reshape_to(c, m, x, sizes)]
    raise UnsupportedModelError(
        f"{m.describe()} views the whole batch as {'x'.join(map(str, sizes))}; "
        "set numInputDims on the View so it keeps the batch dimension"
    )


def _identity(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    return xs


def _cadd(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    if not xs:
        raise UnsupportedModelError(f"{m.describe()} has no inputs")
    shape = max((x[1] for x in xs), key=len)
    return [(c.op("Sum", [x[0] for x in xs], m.name), shape)]


def concat(c: Emitter, m: Module, xs: list[Value], axis: int) -> Value:
    """Join tensors along ``axis`` (0-based, batch first); the batch axis is refused."""
    rank = len(xs[0][1]) if xs else 0
    if not xs or not 0 < axis < rank:
        raise UnsupportedModelError(
            f"{m.describe()} joins {len(xs)} tensors of rank {rank} along dimension {axis}, "
            "which is not a record dimension"
        )
    shape = list(xs[0][1])
    sizes = [x[1][axis] if axis < len(x[1]) else None for x in xs]
    shape[axis] = None if None in sizes else sum(d for d in sizes if d is not None)
    return c.op("Concat", [x[0] for x in xs], m.name, axis=axis), tuple(shape)


def _join(c: Emitter, m: Module, xs: list[Value]) -> list[Value]:
    dim, dims = int(m.attr("dimension")), int(m.attr("nInputDims", 0))
    rank = len(xs[0][1]) if xs else 0
    if dim < 0:
        axis = rank + dim
    elif dims > 0 and rank == dims + 1:  # the inputs are batches: skip the batch dimension
        axis = dim
    else:
        axis = dim - 1
    return [concat(c, m, xs, axis)]


#: BigDL short module type -> handler
HANDLERS: dict[str, Handler] = {
    "Linear": _linear,
    "SpatialConvolution": _conv,
    "SpatialMaxPooling": _max_pool,
    "SpatialAveragePooling": _avg_pool,
    "SpatialBatchNormalization": _batch_norm,
    "BatchNormalization": _batch_norm,
    "ReLU": _unary("Relu"),
    "Tanh": _unary("Tanh"),
    "Sigmoid": _unary("Sigmoid"),
    "SoftMax": _softmax,
    "LogSoftMax": _log_softmax,
    "Reshape": _reshape,
    "View": _view,
    "Dropout": _identity,
    "Identity": _identity,
    "Input": _identity,
    "CAddTable": _cadd,
    "JoinTable": _join,
}
