"""Caffe's spatial and weighted layers as ONNX: Convolution, Deconvolution, InnerProduct,
Pooling and LRN.

Each converter takes the :class:`Graph` and a :class:`LayerCall` and adds the nodes whose last
output is the layer's top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .graph import Dims, Graph, LayerCall, axis_index, dims_text

# caffe.proto enum values (PoolingParameter.PoolMethod / RoundMode, LRNParameter.NormRegion)
_MAX, _AVE = 0, 1
_CEIL = 0
_ACROSS_CHANNELS = 0


def _per_axis(
    call: LayerCall,
    what: str,
    values: Sequence[int],
    hw: tuple[int, int] | None,
    n: int,
    default: int | None,
) -> list[int]:
    """One value per spatial axis from Caffe's ``what: v`` (repeated) or ``what_h``/``what_w``."""
    if hw is not None:
        if values:
            raise call.error(f"give either {what} or {what}_h/{what}_w, not both")
        if n != 2:
            raise call.error(f"{what}_h/{what}_w are for 2-D blobs, this one has {n} spatial axes")
        return list(hw)
    if not values:
        if default is None:
            raise call.error(f"{what}_size (or {what}_h and {what}_w) is not set")
        return [default] * n
    if len(values) == 1:
        return [int(values[0])] * n
    if len(values) != n:
        raise call.error(f"{what} has {len(values)} values for {n} spatial axes")
    return [int(v) for v in values]


def _hw(param: Any, what: str) -> tuple[int, int] | None:
    """(what_h, what_w) where either is set, else None."""
    h, w = f"{what}_h", f"{what}_w"
    if param.HasField(h) or param.HasField(w):
        return int(getattr(param, h)), int(getattr(param, w))
    return None


def _conv_geometry(call: LayerCall, param: Any, n: int) -> tuple[list[int], ...]:
    """kernel, pads, strides, dilations of a (de)convolution over ``n`` spatial axes."""
    kernel = _per_axis(call, "kernel", param.kernel_size, _hw(param, "kernel"), n, None)
    pads = _per_axis(call, "pad", param.pad, _hw(param, "pad"), n, 0)
    strides = _per_axis(call, "stride", param.stride, _hw(param, "stride"), n, 1)
    dilations = _per_axis(call, "dilation", param.dilation, None, n, 1)
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise call.error(
            f"kernel {kernel}, stride {strides} and dilation {dilations} must all be >= 1"
        )
    return kernel, pads, strides, dilations


def _conv_common(g: Graph, call: LayerCall) -> tuple[str, Dims, Any, int, int]:
    """Checks shared by Convolution and Deconvolution: bottom, its shape, param, group, outputs."""
    x = call.single()
    dims = g.shape(x)
    param = call.layer.convolution_param
    if len(dims) < 3:
        raise call.error(f"needs a blob with channels and spatial axes, got {dims_text(dims)}")
    if axis_index(call, param.axis, len(dims)) != 1:
        raise call.unsupported(f"axis {param.axis}: only channels at axis 1 are supported")
    channels, group, num_output = int(dims[1] or 0), int(param.group), int(param.num_output)
    if group < 1 or num_output < 1 or channels % group or num_output % group:
        raise call.error(
            f"group {group} must divide the {channels} input channels and num_output {num_output}"
        )
    return x, dims, param, group, num_output


def convolution(g: Graph, call: LayerCall) -> None:
    x, dims, param, group, num_output = _conv_common(g, call)
    kernel, pads, strides, dilations = _conv_geometry(call, param, len(dims) - 2)
    weights = call.blob(0, "weights", (num_output, int(dims[1] or 0) // group, *kernel))
    inputs = [x, g.const(call.hint("weights"), weights)]
    if param.bias_term:
        inputs.append(g.const(call.hint("bias"), call.blob(1, "bias", (num_output,))))
    spatial = []
    for size, k, p, s, d in zip(dims[2:], kernel, pads, strides, dilations):
        extent = d * (k - 1) + 1
        if size is None or size + 2 * p < extent:
            raise call.error(f"kernel extent {extent} is larger than the padded input {size}+2*{p}")
        spatial.append((size + 2 * p - extent) // s + 1)
    g.op(
        "Conv",
        inputs,
        (None, num_output, *spatial),
        out=call.out,
        kernel_shape=kernel,
        pads=pads + pads,
        strides=strides,
        dilations=dilations,
        group=group,
    )


def deconvolution(g: Graph, call: LayerCall) -> None:
    x, dims, param, group, num_output = _conv_common(g, call)
    kernel, pads, strides, dilations = _conv_geometry(call, param, len(dims) - 2)
    weights = call.blob(0, "weights", (int(dims[1] or 0), num_output // group, *kernel))
    inputs = [x, g.const(call.hint("weights"), weights)]
    if param.bias_term:
        inputs.append(g.const(call.hint("bias"), call.blob(1, "bias", (num_output,))))
    spatial = []
    for size, k, p, s, d in zip(dims[2:], kernel, pads, strides, dilations):
        out = s * (int(size or 0) - 1) + d * (k - 1) + 1 - 2 * p
        if out < 1:
            raise call.error(f"output size {out} < 1 (input {size}, pad {p}, kernel {k})")
        spatial.append(out)
    g.op(
        "ConvTranspose",
        inputs,
        (None, num_output, *spatial),
        out=call.out,
        kernel_shape=kernel,
        pads=pads + pads,
        strides=strides,
        dilations=dilations,
        group=group,
    )


def inner_product(g: Graph, call: LayerCall) -> None:
    """Flatten from ``axis`` + Gemm; for axis > 1, Reshape + MatMul (+ Add)."""
    x = call.single()
    dims = g.shape(x)
    param = call.layer.inner_product_param
    axis = axis_index(call, param.axis, len(dims))
    k = math.prod(int(d or 0) for d in dims[axis:])
    num_output = int(param.num_output)
    if param.transpose:  # stored K x num_output
        weights = call.blob(0, "weights", (k, num_output))
    else:
        weights = call.blob(0, "weights", (num_output, k))
    bias = call.blob(1, "bias", (num_output,)) if param.bias_term else None
    if axis == 1:
        flat = x if len(dims) == 2 else g.op("Flatten", [x], (None, k), hint=call.hint("flat"))
        inputs = [flat, g.const(call.hint("weights"), weights)]
        if bias is not None:
            inputs.append(g.const(call.hint("bias"), bias))
        trans_b = 0 if param.transpose else 1
        g.op("Gemm", inputs, (None, num_output), out=call.out, transB=trans_b)
        return
    lead = dims[:axis]
    shape = g.ints(call.hint("shape"), [0] * axis + [k])
    rows = g.op("Reshape", [x, shape], (*lead, k), hint=call.hint("rows"))
    matrix = weights if param.transpose else weights.T
    out_dims = (*lead, num_output)
    product_out = call.out if bias is None else None
    product = g.op(
        "MatMul",
        [rows, g.const(call.hint("weights"), matrix)],
        out_dims,
        out=product_out,
        hint=call.hint("matmul"),
    )
    if bias is not None:
        g.op("Add", [product, g.const(call.hint("bias"), bias)], out_dims, out=call.out)


def _pooled_size(call: LayerCall, size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Caffe's pooled size: ceil rounding, then drop a last window that starts in the padding."""
    if p >= k:
        raise call.error(f"pad {p} must be smaller than the kernel {k}")
    span = size + 2 * p - k
    if span < 0:
        raise call.error(f"kernel {k} is larger than the padded input {size}+2*{p}")
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    if (out - 1) * s - p >= size:
        # Caffe itself computes such a window over no input (-FLT_MAX for MAX, 0/0 for AVE)
        raise call.unsupported(
            f"with kernel {k}, stride {s}, pad {p} over {size}, Caffe's ceil rounding makes a "
            "last window that covers no input; Caffe's own output there is not meaningful"
        )
    return out


def pooling(g: Graph, call: LayerCall) -> None:
    """MAX / AVE pooling with Caffe's output size and Caffe's AVE divisor.

    Caffe's output size (ceil rounding) is reproduced with explicit end padding under ONNX's
    floor rounding. Caffe's AVE divides by the part of the window inside the *padded* input
    (padding counts, the overhang past it does not): the input is zero-padded by an explicit Pad
    and averaged with ``count_include_pad=0`` over the overhang.
    """
    x = call.single()
    dims = g.shape(x)
    param = call.layer.pooling_param
    if len(dims) != 4:
        raise call.unsupported(f"pools 4-D (N, C, H, W) blobs only, got {dims_text(dims)}")
    if param.pool not in (_MAX, _AVE):
        raise call.unsupported("only MAX and AVE pooling convert (not STOCHASTIC)")
    op = "MaxPool" if param.pool == _MAX else "AveragePool"
    if param.global_pooling:
        g.op(f"Global{op}", [x], (*dims[:2], 1, 1), out=call.out)
        return
    kernel = _per_axis(call, "kernel", param.kernel_size, _hw(param, "kernel"), 2, None)
    pads = _per_axis(call, "pad", param.pad, _hw(param, "pad"), 2, 0)
    strides = _per_axis(call, "stride", param.stride, _hw(param, "stride"), 2, 1)
    if min(kernel) < 1 or min(strides) < 1:
        raise call.error(f"kernel {kernel} and stride {strides} must be >= 1")
    sizes = [int(d or 0) for d in dims[2:]]
    ceil = param.round_mode == _CEIL
    out = [_pooled_size(call, *a, ceil) for a in zip(sizes, kernel, strides, pads)]
    # how far the last window reaches past the padded input (negative: stops short of its end)
    over = [
        (o - 1) * s + k - (n + 2 * p) for o, s, k, n, p in zip(out, strides, kernel, sizes, pads)
    ]
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": strides}
    if param.pool == _MAX:
        ends = [max(p + e, 0) for p, e in zip(pads, over)]
        g.op("MaxPool", [x], (*dims[:2], *out), out=call.out, pads=pads + ends, **attrs)
        return
    src = x
    if any(pads):
        padded = (*dims[:2], *(n + 2 * p for n, p in zip(sizes, pads)))
        widths = g.ints(call.hint("pads"), [0, 0, *pads, 0, 0, *pads])
        src = g.op("Pad", [x, widths], padded, hint=call.hint("padded"), mode="constant")
    ends = [max(e, 0) for e in over]
    g.op(
        "AveragePool",
        [src],
        (*dims[:2], *out),
        out=call.out,
        pads=[0, 0, *ends],
        count_include_pad=0,
        **attrs,
    )


def lrn(g: Graph, call: LayerCall) -> None:
    """ACROSS_CHANNELS is ONNX LRN; WITHIN_CHANNEL is x / (1 + alpha * mean(x^2 over
    size x size))^beta, as Caffe builds it from pooling and power layers."""
    x = call.single()
    dims = g.shape(x)
    param = call.layer.lrn_param
    size = int(param.local_size)
    if size < 1 or size % 2 == 0:
        raise call.error(f"local_size must be odd (as Caffe requires), got {size}")
    if len(dims) != 4:
        raise call.error(f"needs a 4-D (N, C, H, W) blob, as Caffe does; got {dims_text(dims)}")
    if param.norm_region == _ACROSS_CHANNELS:
        g.op(
            "LRN",
            [x],
            dims,
            out=call.out,
            size=size,
            alpha=float(param.alpha),
            beta=float(param.beta),
            bias=float(param.k),
        )
        return
    pre = (size - 1) // 2
    square = g.op("Mul", [x, x], dims, hint=call.hint("square"))
    mean = g.op(
        "AveragePool",
        [square],
        dims,
        hint=call.hint("mean"),
        kernel_shape=[size, size],
        pads=[pre] * 4,
        count_include_pad=1,
    )
    scaled = g.op(
        "Mul", [mean, g.const(call.hint("alpha"), param.alpha)], dims, hint=call.hint("scaled")
    )
    base = g.op("Add", [scaled, g.const(call.hint("one"), 1.0)], dims, hint=call.hint("base"))
    denom = g.op(
        "Pow", [base, g.const(call.hint("beta"), param.beta)], dims, hint=call.hint("denom")
    )
    g.op("Div", [x, denom], dims, out=call.out)


#: Caffe layer type -> converter
HANDLERS = {
    "Convolution": convolution,
    "Deconvolution": deconvolution,
    "InnerProduct": inner_product,
    "Pooling": pooling,
    "LRN": lrn,
}
