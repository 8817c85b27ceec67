"""The Caffe -> ONNX converter, layer by layer, against an independent NumPy forward pass.

The reference re-implements Caffe's forward pass from Caffe's own definitions (direct
convolution loops, Caffe's pooled size and AVE divisor, ...) in float64, with the weights read
straight from the .caffemodel; the converted model runs in ONNX Runtime. The integration tests
(``tests/integration/test_caffe_serving.py``) load this module for the same reference and nets.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo_serving.backends.caffe import caffe_pb2
from zoo_serving.errors import IncompleteModelError, ModelError, UnsupportedModelError

pb2: Any = caffe_pb2
ATOL = 1e-5

# ------------------------------------------------------------------ NumPy reference


def blob_values(blob: Any) -> np.ndarray:
    data = np.array(blob.data if len(blob.data) else blob.double_data, dtype=np.float64)
    if blob.HasField("shape"):
        return data.reshape(tuple(blob.shape.dim))
    return data.reshape(blob.num, blob.channels, blob.height, blob.width)


def read_weights(caffemodel: Path) -> dict[str, list[np.ndarray]]:
    net = pb2.NetParameter.FromString(caffemodel.read_bytes())
    return {ly.name: [blob_values(b) for b in ly.blobs] for ly in [*net.layer, *net.layers]}


def _two(param: Any, what: str, default: int | None) -> list[int]:
    """Caffe's ``what_h``/``what_w`` or repeated ``what`` (``kernel_size`` for the kernel)."""
    if f"{what}_h" in param.DESCRIPTOR.fields_by_name and (
        param.HasField(f"{what}_h") or param.HasField(f"{what}_w")
    ):
        return [getattr(param, f"{what}_h"), getattr(param, f"{what}_w")]
    values = list(getattr(param, "kernel_size" if what == "kernel" else what))
    return (values * 2)[:2] if values else [default, default]


def _geometry(p: Any) -> tuple[list[int], ...]:
    return _two(p, "kernel", 0), _two(p, "pad", 0), _two(p, "stride", 1), _two(p, "dilation", 1)


def _tap(index, dilation, stride, n):
    """Where kernel tap ``index`` meets the input, for ``n`` strided positions."""
    return slice(index * dilation, index * dilation + stride * (n - 1) + 1, stride)


def _bias(p, w):
    return w[1].reshape(1, -1, 1, 1) if p.bias_term else 0.0


def ref_conv(layer, xs, w):
    """Direct convolution: one einsum per kernel tap and group."""
    p, x = layer.convolution_param, xs[0]
    k, pad, s, d = _geometry(p)
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    hw = [
        (m + 2 * q - e * (t - 1) - 1) // u + 1 for m, q, e, t, u in zip(x.shape[2:], pad, d, k, s)
    ]
    weights = w[0].reshape(p.num_output, -1, *k)
    out = []
    for xg, wg in zip(np.split(xp, p.group, 1), np.split(weights, p.group)):
        acc = np.zeros((x.shape[0], wg.shape[0], *hw))
        for i, j in np.ndindex(*k):
            rows, cols = (_tap(t, e, u, m) for t, e, u, m in zip((i, j), d, s, hw))
            acc += np.einsum("nchw,oc->nohw", xg[:, :, rows, cols], wg[:, :, i, j])
        out.append(acc)
    return np.concatenate(out, 1) + _bias(p, w)


def ref_deconv(layer, xs, w):
    """Every input pixel scattered through the kernel (Caffe's col2im), then the pad cropped."""
    p, x = layer.convolution_param, xs[0]
    k, pad, s, d = _geometry(p)
    full = [u * (m - 1) + e * (t - 1) + 1 for u, m, e, t in zip(s, x.shape[2:], d, k)]
    weights = w[0].reshape(x.shape[1], -1, *k)
    out = []
    for xg, wg in zip(np.split(x, p.group, 1), np.split(weights, p.group)):
        acc = np.zeros((x.shape[0], wg.shape[1], *full))
        for i, j in np.ndindex(*k):
            rows, cols = (_tap(t, e, u, m) for t, e, u, m in zip((i, j), d, s, x.shape[2:]))
            acc[:, :, rows, cols] += np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
        out.append(acc[:, :, pad[0] : full[0] - pad[0], pad[1] : full[1] - pad[1]])
    return np.concatenate(out, 1) + _bias(p, w)


def caffe_pooled(size: int, k: int, s: int, p: int, ceil: bool = True) -> int:
    """pooling_layer.cpp: ceil((size + 2p - k) / s) + 1, less a last window starting in the pad."""
    if not ceil:
        return (size + 2 * p - k) // s + 1
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    return out - 1 if p and (out - 1) * s >= size + p else out


def ref_pool(layer, xs, w):
    p, x = layer.pooling_param, xs[0]
    n, c, h, wd = x.shape
    if p.global_pooling:
        reduce = np.max if p.pool == 0 else np.mean
        return reduce(x, axis=(2, 3), keepdims=True)
    k, s, pad = _two(p, "kernel", 0), _two(p, "stride", 1), _two(p, "pad", 0)
    oh, ow = (caffe_pooled(*a, p.round_mode == 0) for a in zip((h, wd), k, s, pad))
    out = np.zeros((n, c, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        hs, ws = i * s[0] - pad[0], j * s[1] - pad[1]
        he, we = min(hs + k[0], h + pad[0]), min(ws + k[1], wd + pad[1])
        window = x[:, :, max(hs, 0) : min(he, h), max(ws, 0) : min(we, wd)]
        if p.pool == 0:
            out[:, :, i, j] = window.max(axis=(2, 3))
        else:  # Caffe divides by the window's extent inside the padded input
            out[:, :, i, j] = window.sum(axis=(2, 3)) / ((he - hs) * (we - ws))
    return out


def ref_lrn(layer, xs, w):
    p, x = layer.lrn_param, xs[0]
    size, pre = p.local_size, (p.local_size - 1) // 2
    if p.norm_region == 0:  # ACROSS_CHANNELS
        sq = np.pad(x**2, ((0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)))
        total = sum(sq[:, i : i + x.shape[1]] for i in range(size))
        return x / (p.k + p.alpha / size * total) ** p.beta
    sq = np.pad(x**2, ((0, 0), (0, 0), (pre, pre), (pre, pre)))
    total = sum(
        sq[:, :, i : i + x.shape[2], j : j + x.shape[3]] for i in range(size) for j in range(size)
    )
    return x / (1 + p.alpha / size**2 * total) ** p.beta


def ref_ip(layer, xs, w):
    p = layer.inner_product_param
    rows = xs[0].reshape(*xs[0].shape[: p.axis], -1)
    k = rows.shape[-1]
    matrix = w[0].reshape(k, -1) if p.transpose else w[0].reshape(-1, k).T
    return rows @ matrix + (w[1].reshape(-1) if p.bias_term else 0.0)


def _per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def ref_batch_norm(layer, xs, w):
    factor = w[2].reshape(-1)[0]
    scale = 0.0 if factor == 0 else 1.0 / factor
    mean, var = (_per_channel(v * scale, xs[0].ndim) for v in w[:2])
    return (xs[0] - mean) / np.sqrt(var + layer.batch_norm_param.eps)


def ref_scale(layer, xs, w):
    p, x = layer.scale_param, xs[0]
    axis = p.axis % x.ndim
    end = x.ndim if p.num_axes == -1 else axis + p.num_axes
    shape = x.shape[axis:end] + (1,) * (x.ndim - end)
    return x * w[0].reshape(shape) + (w[1].reshape(shape) if p.bias_term else 0.0)


def ref_eltwise(layer, xs, w):
    p = layer.eltwise_param
    if p.operation == 0:
        return math.prod(xs)
    if p.operation == 2:
        return np.maximum.reduce(xs)
    return sum(c * x for c, x in zip(list(p.coeff) or [1.0] * len(xs), xs))


def ref_concat(layer, xs, w):
    p = layer.concat_param
    return np.concatenate(xs, p.concat_dim if p.HasField("concat_dim") else p.axis)


def ref_reshape(layer, xs, w):
    p, x = layer.reshape_param, xs[0]
    start = p.axis if p.axis >= 0 else x.ndim + p.axis + 1
    end = x.ndim if p.num_axes == -1 else start + p.num_axes
    new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(p.shape.dim)]
    return x.reshape(*x.shape[:start], *new, *x.shape[end:])


def ref_flatten(layer, xs, w):
    p, x = layer.flatten_param, xs[0]
    return x.reshape(*x.shape[: p.axis % x.ndim], -1, *x.shape[p.end_axis % x.ndim + 1 :])


def ref_softmax(layer, xs, w):
    e = np.exp(xs[0] - xs[0].max(axis=layer.softmax_param.axis, keepdims=True))
    return e / e.sum(axis=layer.softmax_param.axis, keepdims=True)


def ref_prelu(layer, xs, w):
    x = xs[0]
    a = w[0].reshape(-1)[0] if layer.prelu_param.channel_shared else _per_channel(w[0], x.ndim)
    return np.where(x > 0, x, a * x)


REFERENCE = {  # Caffe type -> f(layer, bottoms, weights) -> top
    "Convolution": ref_conv,
    "Deconvolution": ref_deconv,
    "InnerProduct": ref_ip,
    "Pooling": ref_pool,
    "LRN": ref_lrn,
    "ReLU": lambda layer, xs, w: np.where(xs[0] > 0, 1, layer.relu_param.negative_slope) * xs[0],
    "PReLU": ref_prelu,
    "Sigmoid": lambda layer, xs, w: 1 / (1 + np.exp(-xs[0])),
    "TanH": lambda layer, xs, w: np.tanh(xs[0]),
    "Dropout": lambda layer, xs, w: xs[0],
    "BatchNorm": ref_batch_norm,
    "Scale": ref_scale,
    "Eltwise": ref_eltwise,
    "Concat": ref_concat,
    "Flatten": ref_flatten,
    "Reshape": ref_reshape,
    "Softmax": ref_softmax,
}


def numpy_forward(prototxt: Path, caffemodel: Path, feeds: dict[str, np.ndarray]) -> dict:
    """Every blob of the net after a float64 forward pass over ``feeds``."""
    from google.protobuf import text_format

    net = text_format.Parse(prototxt.read_text(), pb2.NetParameter(), allow_unknown_field=True)
    weights = read_weights(caffemodel)
    blobs = {name: np.asarray(x, np.float64) for name, x in feeds.items()}
    for layer in net.layer:
        if layer.type != "Input" and not any(r.phase == pb2.TRAIN for r in layer.include):
            bottoms = [blobs[b] for b in layer.bottom]
            blobs[layer.top[0]] = REFERENCE[layer.type](layer, bottoms, weights.get(layer.name))
    return blobs


# ------------------------------------------------------------------ nets written as prototxt


def save_net(directory: Path, prototxt: str, weights: dict, stem: str = "net", legacy=False):
    """Write ``prototxt`` as is and a .caffemodel of the same net with ``weights`` (layer name
    -> arrays) as its blobs; ``legacy`` writes blobs with num/channels/height/width."""
    from google.protobuf import text_format

    directory.mkdir(parents=True, exist_ok=True)
    net = text_format.Parse(prototxt, pb2.NetParameter(), allow_unknown_field=True)
    for layer in net.layer:
        for array in weights.get(layer.name, []):
            blob = layer.blobs.add(data=np.asarray(array, np.float32).ravel().tolist())
            if legacy:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (
                    4 - array.ndim
                ) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
    paths = directory / f"{stem}.prototxt", directory / f"{stem}.caffemodel"
    paths[0].write_text(prototxt)
    paths[1].write_bytes(net.SerializeToString())
    return paths


def input_layer(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    shape_param = f"input_param {{ shape {{ {dims} }} }}"
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" {shape_param} }}\n'


class Weights:
    """Seeded random weights, scaled by fan-in so activations stay near 1."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int, scale: float | None = None) -> np.ndarray:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        return self.rng.normal(0, scale or 1 / math.sqrt(fan_in), shape)


ALL_LAYERS = """
name: "all_layers"
layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1"
        param { lr_mult: 1 } convolution_param { num_output: 6 kernel_size: 3 pad: 1
        weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" batch_norm_param { eps: 1e-4 } }
layer { name: "sc1" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "c1" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "lrn1" type: "LRN" bottom: "p1" top: "n1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 } }
layer { name: "conv2a" type: "Convolution" bottom: "n1" top: "a"
        convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 1 pad_h: 1 } }
layer { name: "conv2b" type: "Convolution" bottom: "n1" top: "bb" convolution_param {
        num_output: 6 kernel_size: 3 dilation: 2 pad: 2 bias_term: false engine: CAFFE } }
layer { name: "prelu" type: "PReLU" bottom: "a" top: "a" }
layer { name: "tanh" type: "TanH" bottom: "bb" top: "bt" }
layer { name: "sig" type: "Sigmoid" bottom: "a" top: "as" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "bt" top: "e_sum"
        eltwise_param { coeff: 0.5 coeff: -1.5 } }
layer { name: "prod" type: "Eltwise" bottom: "as" bottom: "bt" top: "e_prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "a" bottom: "bt" bottom: "e_prod" top: "e_max"
        eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "e_sum" bottom: "e_prod" bottom: "e_max" top: "cat" }
layer { name: "pool2" type: "Pooling" bottom: "cat" top: "p2"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "deconv" type: "Deconvolution" bottom: "p2" top: "up"
        convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "reshape" type: "Reshape" bottom: "up" top: "r"
        reshape_param { shape { dim: 0 dim: 4 dim: -1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "r" top: "ip1"
        inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "gmax" type: "Pooling" bottom: "up" top: "gmax"
        pooling_param { pool: MAX global_pooling: true } }
layer { name: "gavg" type: "Pooling" bottom: "up" top: "gavg"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "gsum" type: "Eltwise" bottom: "gmax" bottom: "gavg" top: "g" }
layer { name: "flat" type: "Flatten" bottom: "g" top: "gf" }
layer { name: "cat2" type: "Concat" bottom: "ip1" bottom: "gf" top: "cat2" }
layer { name: "ip2" type: "InnerProduct" bottom: "cat2" top: "logits"
        inner_product_param { num_output: 5 transpose: true } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss"
        include { phase: TRAIN } }
"""


def build_all_layers_net(directory: Path, seed: int = 0, size: int = 13, scale: float = 1.0):
    """A net with every layer type the converter supports: input ``data`` 1x3xSxS (whose
    values are about ``scale``), output ``prob``, a softmax over 5 classes."""
    w = Weights(seed)
    half = (size + 1) // 2  # after pool1; then (half + 1) // 2 after pool2, and back up
    up = 2 * ((half + 1) // 2 - 1) + 1
    weights = {
        "conv1": [w(6, 3, 3, 3), w(6)],
        "bn1": [w(6) * 2.5 * scale, w.rng.uniform(0.5, 2, 6) * 2.5 * scale**2, np.array([2.5])],
        "sc1": [w(6, scale=1), w(6, scale=0.2)],
        "conv2a": [w(6, 3, 3, 1), w(6, scale=0.1)],
        "conv2b": [w(6, 6, 3, 3)],
        "prelu": [w.rng.uniform(0, 0.5, 6)],
        "deconv": [w(18, 2, 3, 3), w(4, scale=0.1)],
        "ip1": [w(10, 4 * up * up), w(10)],
        "ip2": [w(14, 5), w(5)],
    }
    return save_net(
        directory, input_layer("data", (1, 3, size, size)) + ALL_LAYERS, weights, "all_layers"
    )


# ------------------------------------------------------------------ running the converted net


def run_onnx(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    arrays = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    return dict(zip(names, session.run(names, arrays)))


def check_against_numpy(prototxt, caffemodel, feeds, input_shape=None) -> dict[str, np.ndarray]:
    """Convert, run both, compare every ONNX output with the reference blob of the same name."""
    import onnx

    from zoo_serving.backends.caffe.convert import convert

    model = convert(prototxt, caffemodel, input_shape)
    onnx.checker.check_model(model, full_check=True)
    got, want = run_onnx(model, feeds), numpy_forward(prototxt, caffemodel, feeds)
    assert got, "the converted model has no outputs"
    for name, value in got.items():
        assert value.shape == want[name].shape, name
        np.testing.assert_allclose(value, want[name], rtol=0, atol=ATOL, err_msg=name)
    return got


def one_layer(tmp_path, shape, layer: str, blobs=(), n_bottoms=1, batch=2):
    """Input(s) x0.. of ``shape`` -> the layer ``layer { name: "layer" top: "out" <layer> }``,
    checked against NumPy over a batch of 2."""
    names = [f"x{i}" for i in range(n_bottoms)]
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    text = "".join(input_layer(n, (1, *shape)) for n in names)
    text += f'layer {{ name: "layer" {bottoms} top: "out" {layer} }}\n'
    w = Weights(1)
    paths = save_net(tmp_path, text, {"layer": [f(w) for f in blobs]})
    rng = np.random.default_rng(2)
    return check_against_numpy(*paths, {n: rng.normal(0, 1, (batch, *shape)) for n in names})


PARAMS = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
          "InnerProduct": "inner_product_param", "ReLU": "relu_param", "PReLU": "prelu_param",
          "Dropout": "dropout_param", "LRN": "lrn_param", "BatchNorm": "batch_norm_param",
          "Scale": "scale_param", "Flatten": "flatten_param", "Reshape": "reshape_param",
          "Softmax": "softmax_param", "Pooling": "pooling_param"}  # fmt: skip
CONST = {  # blobs that are not random
    "slopes": [lambda w: w.rng.uniform(0, 1, 3)],
    "one-slope": [lambda w: np.array([0.3])],
    "stats": [lambda w: w(3) * 4, lambda w: w.rng.uniform(1, 8, 3), lambda w: np.array([4.0])],
    "no-stats": [lambda w: w(3), lambda w: w(3), lambda w: np.array([0.0])],
    "scalar": [lambda w: np.array([1.7])],
}
LAYERS = {  # case -> (record shape, type, its parameters, weight blob shapes or CONST key)
    "conv": ((3, 7, 7), "Convolution", "num_output: 4 kernel_size: 3 pad: 1", [(4, 3, 3, 3), (4,)]),
    "conv-group-stride-hw": ((4, 8, 9), "Convolution", "num_output: 6 group: 2 kernel_h: 3 "
        "kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1", [(6, 2, 3, 1), (6,)]),
    "conv-dilation-nobias": ((3, 9, 9), "Convolution", "num_output: 2 kernel_size: 3 dilation: 2 "
        "bias_term: false", [(2, 3, 3, 3)]),
    "conv-per-axis": ((2, 7, 8), "Convolution", "num_output: 3 kernel_size: 3 kernel_size: 2 "
        "stride: 2 stride: 1 pad: 1 pad: 0", [(3, 2, 3, 2), (3,)]),
    "deconv": ((3, 4, 5), "Deconvolution", "num_output: 2 kernel_size: 2 stride: 2",
        [(3, 2, 2, 2), (2,)]),
    "deconv-group-pad": ((4, 5, 5), "Deconvolution", "num_output: 6 group: 2 kernel_size: 3 "
        "stride: 2 pad: 1 bias_term: false", [(4, 3, 3, 3)]),
    "ip": ((3, 4, 4), "InnerProduct", "num_output: 5", [(5, 48), (5,)]),
    "ip-transpose-nobias": ((6,), "InnerProduct", "num_output: 4 transpose: true "
        "bias_term: false", [(6, 4)]),
    "ip-axis2": ((3, 4, 5), "InnerProduct", "num_output: 2 axis: 2", [(2, 20), (2,)]),
    "relu": ((3, 4), "ReLU", "", []),
    "relu-leaky": ((3, 4), "ReLU", "negative_slope: 0.2", []),
    "prelu": ((3, 4, 4), "PReLU", "", "slopes"),
    "prelu-shared": ((3, 4, 4), "PReLU", "channel_shared: true", "one-slope"),
    "sigmoid": ((3, 5), "Sigmoid", "", []),
    "tanh": ((3, 5), "TanH", "", []),
    "dropout": ((3, 5), "Dropout", "dropout_ratio: 0.7", []),
    "lrn-across": ((7, 3, 3), "LRN", "local_size: 5 alpha: 2 beta: 0.6 k: 1.2", []),
    "lrn-within": ((2, 6, 5), "LRN", "local_size: 3 alpha: 1.5 norm_region: WITHIN_CHANNEL", []),
    "batchnorm": ((3, 4, 4), "BatchNorm", "eps: 1e-3", "stats"),
    "batchnorm-zero-factor": ((3, 2), "BatchNorm", "eps: 1", "no-stats"),
    "scale-bias": ((3, 4, 4), "Scale", "bias_term: true", [(3,), (3,)]),
    "scale-two-axes": ((3, 4, 2), "Scale", "num_axes: 2", [(3, 4)]),
    "scale-scalar": ((3, 2), "Scale", "num_axes: 0", "scalar"),
    "flatten": ((3, 4, 5), "Flatten", "", []),
    "flatten-range": ((3, 4, 5), "Flatten", "axis: 2 end_axis: -1", []),
    "flatten-middle": ((3, 4, 5), "Flatten", "axis: 1 end_axis: 2", []),
    "reshape": ((4, 6), "Reshape", "shape { dim: 0 dim: -1 dim: 3 dim: 2 }", []),
    "reshape-axis": ((4, 6), "Reshape", "shape { dim: 2 dim: 3 } axis: 2", []),
    "reshape-num-axes": ((4, 6, 2), "Reshape", "shape { dim: 2 dim: -1 } axis: 1 num_axes: 1", []),
    "softmax": ((5, 2, 2), "Softmax", "", []),
    "softmax-last": ((2, 3, 4), "Softmax", "axis: -1", []),
    "pool-hw": ((3, 8, 7), "Pooling", "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 "
        "pad_h: 1", []),
    "pool-floor": ((3, 8, 7), "Pooling", "pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR",
        []),
    "pool-global-max": ((3, 8, 7), "Pooling", "pool: MAX global_pooling: true", []),
    "pool-global-ave": ((3, 8, 7), "Pooling", "pool: AVE global_pooling: true", []),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_matches_numpy(case, tmp_path) -> None:
    shape, type_, params, weights = LAYERS[case]
    layer = f'type: "{type_}" {PARAMS[type_]} {{ {params} }}' if params else f'type: "{type_}"'
    makers = CONST[weights] if isinstance(weights, str) else [lambda w, s=s: w(*s) for s in weights]
    one_layer(tmp_path, shape, layer, makers)


@pytest.mark.parametrize(
    "layer",
    [
        'type: "Eltwise"',
        'type: "Eltwise" eltwise_param { coeff: 2 coeff: -0.5 coeff: 1 }',
        'type: "Eltwise" eltwise_param { operation: PROD }',
        'type: "Eltwise" eltwise_param { operation: MAX }',
        'type: "Concat"',
        'type: "Concat" concat_param { axis: -1 }',
        'type: "Concat" concat_param { concat_dim: 2 }',
    ],
)
def test_multi_bottom_layer_matches_numpy(layer, tmp_path) -> None:
    one_layer(tmp_path, (3, 4, 5), layer, n_bottoms=3)


POOL_GRID = [
    (size, k, s, p, pool)
    for size, k, s, p, pool in itertools.product(
        (5, 6, 7, 8), (2, 3), (1, 2, 3), (0, 1, 2), ("MAX", "AVE")
    )
    if p < k
]  # fmt: skip


@pytest.mark.parametrize(("size", "k", "s", "p", "pool"), POOL_GRID)
def test_pooling_ceil_rounding_matches_caffe(size, k, s, p, pool, tmp_path) -> None:
    """Caffe's pooled size (ceil, then the clip rule) and its AVE divisor, over H and W."""
    layer = (
        f'type: "Pooling" pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} }}'
    )
    if any((caffe_pooled(n, k, s, p) - 1) * s - p >= n for n in (size, size + 1)):
        # ceil rounding leaves a last window over no input: Caffe's own output is garbage there
        with pytest.raises(UnsupportedModelError, match="covers no input"):
            one_layer(tmp_path, (2, size, size + 1), layer)
        return
    got = one_layer(tmp_path, (2, size, size + 1), layer)
    assert got["out"].shape[2:] == (caffe_pooled(size, k, s, p), caffe_pooled(size + 1, k, s, p))


def test_fixture_net_matches_numpy(fixtures_dir) -> None:
    caffe = fixtures_dir / "caffe"
    feeds = {"data": np.random.default_rng(0).normal(0, 1, (3, 3, 5, 5))}
    got = check_against_numpy(caffe / "test.prototxt", caffe / "test.caffemodel", feeds)
    assert list(got) == ["out"] and got["out"].shape == (3, 2)


def test_all_layers_net_matches_numpy(tmp_path) -> None:
    from zoo_serving.backends.caffe.convert import SUPPORTED_TYPES, read_net

    prototxt, caffemodel = build_all_layers_net(tmp_path)
    feeds = {"data": np.random.default_rng(3).normal(0, 1, (4, 3, 13, 13))}
    got = check_against_numpy(prototxt, caffemodel, feeds)
    assert list(got) == ["prob"] and got["prob"].shape == (4, 5)
    assert {layer.type for layer in read_net(prototxt, caffemodel).layers} == set(SUPPORTED_TYPES)


# ------------------------------------------------------------------ inputs, outputs, naming

SMALL = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""
SMALL_WEIGHTS = {"conv": [Weights()(2, 3, 3, 3), np.array([0.1, -0.2])]}


@pytest.mark.parametrize(
    "declaration",
    [
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n',
        'input: "data" input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }\n',
        input_layer("data", (1, 3, 6, 6)),
    ],
)
def test_input_declarations(declaration, tmp_path) -> None:
    paths = save_net(tmp_path, declaration + SMALL, SMALL_WEIGHTS)
    got = check_against_numpy(*paths, {"data": np.ones((2, 3, 6, 6))})
    assert got["conv"].shape == (2, 2, 4, 4)


def test_net_without_input_declaration_takes_the_given_shape(tmp_path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    prototxt, caffemodel = save_net(tmp_path, SMALL, SMALL_WEIGHTS)
    feeds = {"data": np.random.default_rng(0).normal(0, 1, (1, 3, 7, 7))}
    got = check_against_numpy(prototxt, caffemodel, feeds, input_shape=(3, 7, 7))
    assert got["conv"].shape == (1, 2, 5, 5)
    model = convert(prototxt, caffemodel, (3, 7, 7))
    assert [i.name for i in model.graph.input] == ["data"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 7, 7]
    with pytest.raises(ModelError, match="no shape for input 'data'.*data.shape"):
        convert(prototxt, caffemodel)


def test_in_place_layers_and_several_outputs(tmp_path) -> None:
    text = input_layer("data", (1, 3, 5, 5)) + SMALL
    text += 'layer { name: "sig" type: "Sigmoid" bottom: "conv" top: "side" }\n'
    text += 'layer { name: "tanh" type: "TanH" bottom: "conv" top: "conv" }\n'
    got = check_against_numpy(
        *save_net(tmp_path, text, SMALL_WEIGHTS), {"data": np.ones((1, 3, 5, 5))}
    )
    assert sorted(got) == ["conv", "side"]  # the final version of an in-place blob keeps its name


def test_model_is_opset_17_ir_8_with_free_batch(fixtures_dir) -> None:
    from zoo_serving.backends.caffe.convert import convert

    caffe = fixtures_dir / "caffe"
    calls: list[tuple[int, int]] = []
    model = convert(
        caffe / "test.prototxt", caffe / "test.caffemodel", progress=lambda *a: calls.append(a)
    )
    assert model.ir_version == 8 and [o.version for o in model.opset_import] == [17]
    assert run_onnx(model, {"data": np.zeros((7, 3, 5, 5))})["out"].shape == (7, 2)
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]  # progress(done, total) per layer


# ------------------------------------------------------------------ errors and old formats


def test_unsupported_layers_are_named(tmp_path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    text = input_layer("data", (1, 3, 5, 5)) + SMALL
    text += """
    layer { name: "best" type: "ArgMax" bottom: "conv" top: "best" argmax_param { top_k: 2 } }
    layer { name: "py" type: "Python" bottom: "conv" top: "py" python_param { module: "m" } }
    """
    with pytest.raises(UnsupportedModelError) as info:
        convert(*save_net(tmp_path, text, SMALL_WEIGHTS))
    message = str(info.value)
    assert "'best' (ArgMax)" in message and "'py' (Python)" in message
    assert "Convolution" in message and "Softmax" in message  # what it does convert


def test_weights_that_do_not_fit_name_the_layer(tmp_path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    text = input_layer("data", (1, 3, 5, 5)) + SMALL.replace("kernel_size: 3", "kernel_size: 2")
    with pytest.raises(ModelError, match=r"'conv' \(Convolution\): weights .*\(2, 3, 2, 2\)"):
        convert(*save_net(tmp_path, text, SMALL_WEIGHTS))


def test_files_that_are_not_caffe(tmp_path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    prototxt, caffemodel = save_net(tmp_path, SMALL, SMALL_WEIGHTS)
    caffemodel.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ModelError, match="net.caffemodel: not a Caffe weights file"):
        convert(prototxt, caffemodel, (3, 5, 5))
    prototxt.write_text('layer { name: "conv" type "Convolution" }')
    with pytest.raises(ModelError, match="net.prototxt: not a Caffe net definition"):
        convert(prototxt, caffemodel, (3, 5, 5))


def test_legacy_blobs_and_v1_layers(tmp_path) -> None:
    """Pre-2015 files: num/channels/height/width blobs, ``layers { type: ENUM }``."""
    from google.protobuf import text_format

    from zoo_serving.backends.caffe.convert import convert

    w = Weights(5)
    head = 'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
    text = (
        head
        + """
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 5 } }
    layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
    """
    )
    paths = save_net(tmp_path / "legacy", text, {"ip": [w(5, 48), w(5)]}, legacy=True)
    feeds = {"data": np.random.default_rng(0).normal(0, 1, (2, 3, 4, 4))}
    want = check_against_numpy(*paths, feeds)["prob"]

    v1 = text_format.Parse(head + """
    layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
             inner_product_param { num_output: 5 } }
    layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }
    """, pb2.NetParameter())  # fmt: skip
    (tmp_path / "v1.prototxt").write_text(text_format.MessageToString(v1))
    v1.layers[0].blobs.extend(pb2.NetParameter.FromString(paths[1].read_bytes()).layer[0].blobs)
    (tmp_path / "v1.caffemodel").write_bytes(v1.SerializeToString())
    got = run_onnx(convert(tmp_path / "v1.prototxt", tmp_path / "v1.caffemodel"), feeds)
    np.testing.assert_allclose(got["prob"], want, rtol=0, atol=ATOL)


# ------------------------------------------------------------------ the backend


def test_caffe_model_backend(fixtures_dir, tmp_path) -> None:
    from zoo_serving.backends import load_model

    backend = "zoo_serving.backends.caffe:CaffeModel"
    caffe = fixtures_dir / "caffe"
    with load_model(caffe, backend=backend) as model:
        assert model.backend == "caffe" and model.image_layout == "CHW"
        assert [(s.name, s.shape) for s in model.inputs] == [("data", (None, 3, 5, 5))]
        assert [(s.name, s.shape) for s in model.outputs] == [("out", (None, 2))]
        x = np.random.default_rng(4).normal(0, 1, (3, 3, 5, 5)).astype(np.float32)
        want = numpy_forward(caffe / "test.prototxt", caffe / "test.caffemodel", {"data": x})
        np.testing.assert_allclose(
            model.predict({"data": x})["out"], want["out"], rtol=0, atol=ATOL
        )

    save_net(tmp_path / "free", SMALL, SMALL_WEIGHTS, stem="deploy")
    with load_model(tmp_path / "free", backend=backend, input_shape=(3, 9, 9)) as model:
        assert model.inputs[0].shape == (None, 3, 9, 9)  # no input declaration: data.shape

    prototxt, caffemodel = save_net(tmp_path / "half", SMALL, SMALL_WEIGHTS)
    caffemodel.unlink()
    with pytest.raises(IncompleteModelError, match=r"no \*.caffemodel"):
        load_model(prototxt, backend=backend)
