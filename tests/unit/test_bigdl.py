"""The BigDL reader and converter: the fixture LeNet against an independent NumPy forward pass,
each supported module type on a small BigDLModule built here, shared storages, and errors."""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo_serving.backends.base import ModelOptions
from zoo_serving.backends.bigdl import BigDLModel
from zoo_serving.backends.bigdl import bigdl_pb2 as pb
from zoo_serving.backends.bigdl.convert import convert, supported_types
from zoo_serving.backends.bigdl.reader import Module, TensorReader, read_module
from zoo_serving.errors import ConfigError, ModelNotFoundError, UnsupportedModelError

NN = "com.intel.analytics.bigdl.nn."
RNG = np.random.default_rng(7)

# ------------------------------------------------------------------ building BigDLModules


def tensor(arr: np.ndarray, storage_id: int | None = None) -> Any:
    """A BigDLTensor holding ``arr`` (float32, contiguous) in its own storage."""
    arr = np.asarray(arr, np.float32)
    sid = storage_id if storage_id is not None else int(RNG.integers(1, 2**30))
    t = pb.BigDLTensor(datatype=pb.FLOAT, size=arr.shape, offset=1, nElements=arr.size)
    t.stride.extend(np.array(arr.strides, np.int64) // 4)
    t.storage.CopyFrom(pb.TensorStorage(datatype=pb.FLOAT, float_data=arr.ravel(), id=sid))
    t.id = sid + 1
    return t


def attr(value: Any) -> Any:
    a = pb.AttrValue()
    if isinstance(value, bool):
        a.dataType, a.boolValue = pb.BOOL, value
    elif isinstance(value, int):
        a.dataType, a.int32Value = pb.INT32, value
    elif isinstance(value, float):
        a.dataType, a.doubleValue = pb.DOUBLE, value
    elif isinstance(value, np.ndarray):
        a.dataType = pb.TENSOR
        a.tensorValue.CopyFrom(tensor(value))
    elif isinstance(value, dict):  # a graph node's edges: {pre-module: fromIndex}
        a.dataType = pb.NAME_ATTR_LIST
        a.nameAttrListValue.name = value.pop("__node__")
        for key, index in value.items():
            a.nameAttrListValue.attr[key].int32Value = index
    elif value and isinstance(value[0], str):
        a.dataType = pb.ARRAY_VALUE
        a.arrayValue.datatype, a.arrayValue.size = pb.STRING, len(value)
        a.arrayValue.str.extend(value)
    else:
        a.dataType = pb.ARRAY_VALUE
        a.arrayValue.datatype, a.arrayValue.size = pb.INT32, len(value)
        a.arrayValue.i32.extend(value)
    return a


def module(
    kind: str,
    name: str = "",
    *,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    subs: Sequence[Any] = (),
    pre: Sequence[str] = (),
    prefix: str = NN,
    **attrs: Any,
) -> Any:
    m = pb.BigDLModule(name=name or kind.lower(), moduleType=prefix + kind, version="0.5.0")
    if weight is not None:
        m.weight.CopyFrom(tensor(weight))
    if bias is not None:
        m.bias.CopyFrom(tensor(bias))
    m.subModules.extend(subs)
    m.preModules.extend(pre)
    for key, value in attrs.items():
        m.attr[key].CopyFrom(attr(value))
    return m


def graph(nodes: Sequence[Any], inputs: Sequence[str], outputs: Sequence[str]) -> Any:
    """A StaticGraph of ``nodes`` (their preModules give the edges)."""
    g = module("StaticGraph", "graph", subs=nodes, inputNames=list(inputs))
    g.attr["outputNames"].CopyFrom(attr(list(outputs)))
    for node in nodes:
        edges = {"__node__": node.name, **{p: -1 for p in node.preModules}}
        g.attr[f"{node.name}_edges"].CopyFrom(attr(edges))
    return g


def run(root: Any, x: np.ndarray | Sequence[np.ndarray], tmp_path: Path, shape=None) -> list:
    """Save ``root``, convert it, check the ONNX, and run it on ``x`` with ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m.model"
    path.write_bytes(root.SerializeToString())
    model = convert(path, shape)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # declared shapes agree
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    feeds = {i.name: a.astype(np.float32) for i, a in zip(sess.get_inputs(), xs)}
    outs = sess.run(None, feeds)
    for info, out in zip(model.graph.output, outs):  # declared shapes are the real ones
        dims = [d.dim_value or None for d in info.type.tensor_type.shape.dim]
        assert len(dims) == out.ndim and all(d in (None, o) for d, o in zip(dims, out.shape))
    return outs


# ------------------------------------------------------------------ NumPy references


def out_size(size: int, k: int, s: int, p: int, ceil: bool, padded: bool) -> tuple[int, int, int]:
    """BigDL's Utils.getOutSizeAndPadding (or SAME for p == -1): (out, pad_begin, pad_end)."""
    if p == -1:
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + k - size)
        return out, total // 2, total - total // 2
    out = (math.ceil if ceil else math.floor)((size - k + 2 * p) / s) + 1
    if padded and (out - 1) * s >= size + p:
        out -= 1
    return out, p, p


def conv_ref(x, w, b, stride=(1, 1), pad=(0, 0), groups=1):
    """Direct convolution, one output position at a time (weights [out, in/groups, kH, kW])."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    padded = pad[0] > 0 or pad[1] > 0  # BigDL drops a last window that sees padding only
    (oh, pt, pb_), (ow, pl, pr) = (
        out_size(h, kh, stride[0], pad[0], False, padded),
        out_size(wd, kw, stride[1], pad[1], False, padded),
    )
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb_), (pl, pr)))
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * stride[0], j * stride[1]
                patch = xp[:, g * cg : (g + 1) * cg, hs : hs + kh, ws : ws + kw]
                out[:, g * og : (g + 1) * og, i, j] = np.einsum(
                    "nckl,ockl->no", patch, w[g * og : (g + 1) * og]
                )
    return out + (0 if b is None else b[None, :, None, None])


def pool_ref(x, k, s, p, ceil=False, kind="max", include_pad=True, divide=True):
    """BigDL's SpatialMax/AveragePooling frame loops."""
    n, c, h, w = x.shape
    padded = p[0] != 0 or p[1] != 0
    (oh, pt, pbot), (ow, pl, pr) = (
        out_size(h, k[0], s[0], p[0], ceil, padded),
        out_size(w, k[1], s[1], p[1], ceil, padded),
    )
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - pt, j * s[1] - pl
            he, we = min(hs + k[0], h + pbot), min(ws + k[1], w + pr)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we].astype(np.float64)
            if kind == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                div = size if include_pad else (he - hs) * (we - ws)
                out[:, :, i, j] = win.sum(axis=(2, 3)) / div * (1 if divide else k[0] * k[1])
    return out


def log_softmax_ref(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax_ref(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------ the fixture LeNet


@pytest.fixture(scope="module")
def lenet(fixtures_dir: Path) -> Path:
    return fixtures_dir / "bigdl" / "bigdl_lenet.model"


def lenet_numpy(path: Path, x: np.ndarray) -> np.ndarray:
    """The fixture LeNet by hand, over weights the reader takes from the file."""
    root = read_module(path)
    reader = TensorReader(root)
    layers = {sub.name: Module(sub, reader) for sub in root.subModules}

    def params(name: str) -> tuple[np.ndarray, np.ndarray]:
        w, b = layers[name].params()
        assert w is not None and b is not None
        return w.astype(np.float64), b.astype(np.float64)

    def pool(y: np.ndarray) -> np.ndarray:
        return pool_ref(y, (2, 2), (2, 2), (0, 0))

    w1, b1 = params("conv1_5x5")
    w2, b2 = params("conv2_5x5")
    y = x.reshape(len(x), 1, 28, 28)
    y = np.tanh(pool(np.tanh(conv_ref(y, w1.reshape(6, 1, 5, 5), b1))))
    y = pool(conv_ref(y, w2.reshape(12, 6, 5, 5), b2)).reshape(len(x), 192)
    wf1, bf1 = params("fc1")
    wf2, bf2 = params("fc2")
    y = np.tanh(y @ wf1.T + bf1) @ wf2.T + bf2
    return log_softmax_ref(y)


def digits(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like 28x28 images: strokes of ink in [0, 1] on a blank page."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 1, 28, 28), np.float32)
    for k in range(n):
        for _ in range(3):
            r, c = rng.integers(4, 24, 2)
            img[k, 0, r - 3 : r + 3, c - 1 : c + 2] = rng.uniform(0.5, 1.0)
    return img


def test_lenet_matches_numpy_forward(lenet: Path, tmp_path: Path) -> None:
    x = np.concatenate([digits(6), RNG.random((2, 1, 28, 28), np.float32)])
    [out] = run(read_module(lenet), x, tmp_path)
    expected = lenet_numpy(lenet, x)
    assert out.shape == (8, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-5)  # log-probabilities
    assert (out <= 0).all()
    [flat] = run(read_module(lenet), x.reshape(8, 784), tmp_path, shape=(784,))
    np.testing.assert_allclose(flat, expected, rtol=0, atol=1e-5)


def test_lenet_structure_and_progress(lenet: Path) -> None:
    root = read_module(lenet)
    assert root.moduleType == NN + "StaticGraph"
    types = {s.name: s.moduleType.rsplit(".", 1)[1] for s in root.subModules}
    assert types["conv1_5x5"] == "SpatialConvolution" and types["logSoftMax"] == "LogSoftMax"
    calls: list[tuple[int, int]] = []
    model = convert(lenet, None, lambda done, total: calls.append((done, total)))
    assert calls == [(i, 13) for i in range(1, 14)]  # 12 modules and the graph
    assert (model.ir_version, model.opset_import[0].version) == (8, 17)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 28, 28]  # the first Reshape
    assert convert(lenet, (28, 28)).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 28


def test_lenet_weights_come_from_the_global_storage(lenet: Path) -> None:
    root = read_module(lenet)
    fc1 = next(s for s in root.subModules if s.name == "fc1")
    assert not fc1.weight.storage.float_data  # only the storage id here, data elsewhere
    shared = root.attr["global_storage"].nameAttrListValue.attr[str(fc1.weight.id)]
    raw = np.array(shared.tensorValue.storage.float_data, np.float32)
    weight, bias = Module(fc1, TensorReader(root)).params()
    assert weight is not None and bias is not None
    np.testing.assert_array_equal(weight, raw.reshape(100, 192))
    assert bias.shape == (100,)


def test_input_shape_that_does_not_fit_names_data_shape(lenet: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.shape 3,224,224 .*Reshape 'reshape1'.*784"):
        convert(lenet, (3, 224, 224))


# ------------------------------------------------------------------ each module type


def test_sequential_linear_activations_softmax(tmp_path: Path) -> None:
    w1, b1, w2 = RNG.normal(size=(8, 6)), RNG.normal(size=8), RNG.normal(size=(4, 8))
    root = module(
        "Sequential",
        subs=[
            module("Linear", "fc1", weight=w1, bias=b1, inputSize=6, outputSize=8),
            module("ReLU", "relu"),
            module("Dropout", "drop"),
            module("Identity", "id"),
            module("Linear", "fc2", weight=w2, inputSize=8, outputSize=4, withBias=False),
            module("Tanh", "tanh"),
            module("Sigmoid", "sigmoid"),
            module("SoftMax", "softmax"),
        ],
    )
    x = RNG.normal(size=(5, 6))
    [out] = run(root, x, tmp_path)
    h = np.maximum(x @ w1.T + b1, 0) @ w2.T
    expected = softmax_ref(1 / (1 + np.exp(-np.tanh(h))), axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("stride", "pad", "groups", "bias"),
    [
        ((1, 1), (0, 0), 1, True),
        ((2, 1), (1, 2), 2, True),
        ((2, 2), (-1, -1), 1, False),
    ],
)
def test_spatial_convolution(tmp_path: Path, stride, pad, groups, bias) -> None:
    c_in, c_out, k = 4, 6, (3, 2)
    # BigDL keeps the weight as [nGroup, out/group, in/group, kH, kW]
    w = RNG.normal(size=(groups, c_out // groups, c_in // groups, *k))
    b = RNG.normal(size=c_out) if bias else None
    conv = module(
        "SpatialConvolution",
        "conv",
        weight=w,
        bias=b,
        nInputPlane=c_in,
        nOutputPlane=c_out,
        kernelH=k[0],
        kernelW=k[1],
        strideH=stride[0],
        strideW=stride[1],
        padH=pad[0],
        padW=pad[1],
        nGroup=groups,
        withBias=bias,
    )
    x = RNG.normal(size=(2, c_in, 7, 9))
    [out] = run(module("Sequential", subs=[conv]), x, tmp_path, shape=(c_in, 7, 9))
    expected = conv_ref(x, w.reshape(c_out, c_in // groups, *k), b, stride, pad, groups)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("k", "s", "p", "ceil"),
    [
        ((2, 2), (2, 2), (0, 0), False),
        ((3, 3), (2, 2), (1, 1), True),
        ((3, 2), (2, 2), (0, 0), True),
        ((3, 3), (2, 1), (-1, -1), False),
    ],
)
def test_spatial_max_pooling(tmp_path: Path, k, s, p, ceil) -> None:
    pool = module(
        "SpatialMaxPooling",
        "pool",
        kH=k[0],
        kW=k[1],
        dH=s[0],
        dW=s[1],
        padH=p[0],
        padW=p[1],
        ceil_mode=ceil,
    )
    x = RNG.normal(size=(2, 3, 8, 7))
    [out] = run(module("Sequential", subs=[pool]), x, tmp_path, shape=(3, 8, 7))
    np.testing.assert_allclose(out, pool_ref(x, k, s, p, ceil), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "s", "p", "ceil", "include", "divide"),
    [
        ((2, 2), (2, 2), (0, 0), False, True, True),
        ((3, 3), (2, 2), (1, 1), True, True, True),
        ((3, 3), (2, 2), (1, 1), True, False, True),
        ((3, 2), (1, 2), (1, 0), False, True, False),
        ((3, 3), (2, 2), (-1, -1), False, True, True),
    ],
)
def test_spatial_average_pooling(tmp_path: Path, k, s, p, ceil, include, divide) -> None:
    pool = module(
        "SpatialAveragePooling",
        "avg",
        kH=k[0],
        kW=k[1],
        dH=s[0],
        dW=s[1],
        padH=p[0],
        padW=p[1],
        ceilMode=ceil,
        countIncludePad=include,
        divide=divide,
        globalPooling=False,
    )
    x = RNG.normal(size=(2, 3, 8, 7))
    [out] = run(module("Sequential", subs=[pool]), x, tmp_path, shape=(3, 8, 7))
    expected = pool_ref(x, k, s, p, ceil, "avg", include, divide)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_global_average_pooling(tmp_path: Path) -> None:
    pool = module("SpatialAveragePooling", "gap", kH=1, kW=1, globalPooling=True)
    x = RNG.normal(size=(2, 3, 5, 4))
    [out] = run(module("Sequential", subs=[pool]), x, tmp_path, shape=(3, 5, 4))
    np.testing.assert_allclose(out, x.mean(axis=(2, 3), keepdims=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_spatial_batch_normalization(tmp_path: Path, affine: bool) -> None:
    n = 3
    mean, var = RNG.normal(size=n), RNG.uniform(0.5, 2.0, n)
    w, b = (RNG.normal(size=n), RNG.normal(size=n)) if affine else (None, None)
    bn = module(
        "SpatialBatchNormalization",
        "bn",
        weight=w,
        bias=b,
        nOutput=n,
        eps=1e-3,
        affine=affine,
        runningMean=mean,
        runningVar=var,
    )
    x = RNG.normal(size=(2, n, 4, 5))
    [out] = run(module("Sequential", subs=[bn]), x, tmp_path, shape=(n, 4, 5))
    c = (slice(None), None, None)
    expected = (x - mean[c]) / np.sqrt(var[c] + 1e-3)
    if affine:
        expected = expected * w[c] + b[c]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_reshape_view_and_log_softmax(tmp_path: Path) -> None:
    root = module(
        "Sequential",
        subs=[
            module("Reshape", "to_image", size=[2, 3, 4], batchMode=0),
            module("View", "flat", sizes=[12, 2], numInputDims=3),
            module("View", "again", sizes=[-1, 24]),
            module("LogSoftMax", "logp"),
        ],
    )
    x = RNG.normal(size=(3, 24))
    [out] = run(root, x, tmp_path, shape=(24,))
    np.testing.assert_allclose(out, log_softmax_ref(x), rtol=0, atol=1e-5)
    [same] = run(root, x.reshape(3, 2, 3, 4), tmp_path)  # the first Reshape's own shape
    np.testing.assert_allclose(same, out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-5)


def test_view_keeps_the_batch(tmp_path: Path) -> None:
    root = module(
        "Sequential",
        subs=[
            module("Reshape", "r", size=[2, 3, 4], batchMode=2),
            module("View", "merge", sizes=[12], numInputDims=1),  # [N, 2, 3, 4] -> [N*2*3, 4]...
            module("View", "rows", sizes=[6, 4]),  # ... and back to [N, 6, 4], no numInputDims
            module("View", "flat", sizes=[24], numInputDims=2),
            module("SoftMax", "p"),
        ],
    )
    root.subModules[1].attr["sizes"].CopyFrom(attr([4]))  # merge the leading three dims
    x = RNG.normal(size=(3, 24))
    [out] = run(root, x, tmp_path, shape=(24,))
    np.testing.assert_allclose(out, softmax_ref(x, axis=1), rtol=0, atol=1e-6)


def test_unknown_spatial_sizes_use_onnx_padding_modes(tmp_path: Path) -> None:
    """A model starting with a convolution takes C,?,? records when data.shape is not given."""
    w = RNG.normal(size=(4, 3, 3, 3))
    root = module(
        "Sequential",
        subs=[
            module(
                "SpatialConvolution",
                "conv",
                weight=w,
                nInputPlane=3,
                nOutputPlane=4,
                kernelH=3,
                kernelW=3,
                strideH=2,
                strideW=2,
                padH=-1,
                padW=-1,
                withBias=False,
            ),
            module("SpatialMaxPooling", "pool", kH=2, kW=2, dH=2, dW=2, ceil_mode=True),
            module("JoinTable", "same", dimension=-3, pre=[]),
        ],
    )
    x = RNG.normal(size=(2, 3, 9, 11))
    [out] = run(root, x, tmp_path)
    y = conv_ref(x, w, None, stride=(2, 2), pad=(-1, -1))
    np.testing.assert_allclose(out, pool_ref(y, (2, 2), (2, 2), (0, 0), True), atol=1e-5)


def test_softmax_on_feature_maps_normalises_channels(tmp_path: Path) -> None:
    x = RNG.normal(size=(2, 3, 4, 5))
    [out] = run(module("Sequential", subs=[module("SoftMax")]), x, tmp_path, shape=(3, 4, 5))
    np.testing.assert_allclose(out, softmax_ref(x, axis=1), rtol=0, atol=1e-6)


def test_static_graph_with_cadd_and_join_branches(tmp_path: Path) -> None:
    wa, wb, wc = (RNG.normal(size=(4, 6)) for _ in range(3))
    nodes = [
        module("Input", "in"),
        module("Linear", "a", weight=wa, bias=np.ones(4), inputSize=6, outputSize=4, pre=["in"]),
        module("Linear", "b", weight=wb, inputSize=6, outputSize=4, withBias=False, pre=["in"]),
        module("Linear", "c", weight=wc, inputSize=6, outputSize=4, withBias=False, pre=["in"]),
        module("CAddTable", "sum", pre=["a", "b"]),
        module("ReLU", "relu", pre=["c"]),
        module("JoinTable", "join", dimension=1, nInputDims=1, pre=["sum", "relu"]),
    ]
    x = RNG.normal(size=(3, 6))
    [out] = run(graph(nodes, ["in"], ["join"]), x, tmp_path, shape=(6,))
    expected = np.concatenate([x @ wa.T + 1 + x @ wb.T, np.maximum(x @ wc.T, 0)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_graph_with_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    wa, wb = RNG.normal(size=(2, 3)), RNG.normal(size=(4, 5))
    nodes = [
        module("Input", "x"),
        module("Input", "y"),
        module("Linear", "a", weight=wa, inputSize=3, outputSize=2, withBias=False, pre=["x"]),
        module("Linear", "b", weight=wb, inputSize=5, outputSize=4, withBias=False, pre=["y"]),
        module("JoinTable", "join", dimension=2, nInputDims=0, pre=["b", "a"]),
        module("Tanh", "t", pre=["a"]),
    ]
    x, y = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 5))
    joined, t = run(graph(nodes, ["x", "y"], ["join", "t"]), [x, y], tmp_path)
    np.testing.assert_allclose(joined, np.concatenate([y @ wb.T, x @ wa.T], axis=1), atol=1e-5)
    np.testing.assert_allclose(t, np.tanh(x @ wa.T), atol=1e-5)


def test_concat_table_and_concat_containers(tmp_path: Path) -> None:
    w = RNG.normal(size=(2, 3, 3, 3))
    root = module(
        "Sequential",
        subs=[
            module("ConcatTable", "branches", subs=[module("Identity", "same"), module("ReLU")]),
            module("CAddTable", "add"),
            module(
                "Concat",
                "cat",
                dimension=2,
                subs=[
                    module("Identity", "keep"),
                    module(
                        "SpatialConvolution",
                        "conv",
                        weight=w,
                        nInputPlane=3,
                        nOutputPlane=2,
                        kernelH=3,
                        kernelW=3,
                        padH=1,
                        padW=1,
                        withBias=False,
                    ),
                ],
            ),
        ],
    )
    x = RNG.normal(size=(2, 3, 4, 4))
    [out] = run(root, x, tmp_path, shape=(3, 4, 4))
    h = x + np.maximum(x, 0)
    expected = np.concatenate([h, conv_ref(h, w, None, pad=(1, 1))], axis=1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_later_bigdl_parameters_and_dllib_package(tmp_path: Path) -> None:
    w, b = RNG.normal(size=(3, 4)), RNG.normal(size=3)
    dllib = "com.intel.analytics.bigdl.dllib.nn."
    fc = module("Linear", "fc", prefix=dllib, inputSize=4, outputSize=3)
    fc.parameters.extend([tensor(w), tensor(b)])
    x = RNG.normal(size=(2, 4))
    [out] = run(module("Sequential", prefix=dllib, subs=[fc]), x, tmp_path)
    np.testing.assert_allclose(out, x @ w.T + b, rtol=0, atol=1e-5)


def test_shared_storage_with_offsets_and_strides(tmp_path: Path) -> None:
    """Two Linears whose weights are views of one storage, as after BigDL's getParameters():
    the data sits once in global_storage; the modules name the storage by id, with an offset,
    and the second view is transposed by its strides."""
    flat = RNG.normal(size=40).astype(np.float32)
    store = pb.TensorStorage(datatype=pb.FLOAT, id=99)

    def view(tid: int, size: list[int], stride: list[int], offset: int) -> Any:
        t = pb.BigDLTensor(datatype=pb.FLOAT, size=size, stride=stride, offset=offset, id=tid)
        t.storage.CopyFrom(store)
        return t

    fc1 = module("Linear", "fc1", inputSize=4, outputSize=3)
    fc1.weight.CopyFrom(view(1, [3, 4], [4, 1], 3))  # flat[2:14] as 3x4
    fc1.bias.CopyFrom(view(2, [3], [1], 15))  # flat[14:17]
    fc2 = module("Linear", "fc2", inputSize=3, outputSize=2, withBias=False)
    fc2.weight.CopyFrom(view(3, [2, 3], [1, 2], 21))  # flat[20:26] as 3x2, transposed
    root = module("Sequential", subs=[fc1, fc2])
    holder = pb.AttrValue()
    holder.nameAttrListValue.name = "global_storage"
    full = view(4, [40], [1], 1)
    full.storage.float_data.extend(flat)
    holder.nameAttrListValue.attr["4"].tensorValue.CopyFrom(full)
    root.attr["global_storage"].CopyFrom(holder)

    reader = TensorReader(root)
    w1, b1 = Module(fc1, reader).params()
    w2, _ = Module(fc2, reader).params()
    np.testing.assert_array_equal(w1, flat[2:14].reshape(3, 4))
    np.testing.assert_array_equal(b1, flat[14:17])
    np.testing.assert_array_equal(w2, flat[20:26].reshape(3, 2).T)
    x = RNG.normal(size=(2, 4))
    [out] = run(root, x, tmp_path)
    np.testing.assert_allclose(out, (x @ w1.T + b1) @ w2.T, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ errors


def test_unsupported_module_is_named(tmp_path: Path) -> None:
    root = module(
        "Sequential",
        subs=[
            module("Linear", "fc", weight=np.ones((2, 2)), inputSize=2, outputSize=2),
            module("SpatialFullConvolution", "deconv7"),
        ],
    )
    path = tmp_path / "m.model"
    path.write_bytes(root.SerializeToString())
    with pytest.raises(UnsupportedModelError) as info:
        convert(path)
    msg = str(info.value)
    assert "'deconv7'" in msg and "SpatialFullConvolution" in msg
    assert NN + "SpatialFullConvolution" in msg and "supported: " in msg and "JoinTable" in msg
    assert info.value.details["module_type"] == NN + "SpatialFullConvolution"
    assert str(pickle.loads(pickle.dumps(info.value))) == msg


def test_module_outside_bigdl_is_unsupported(tmp_path: Path) -> None:
    root = module("Sequential", subs=[module("MyLayer", "mine", prefix="com.example.")])
    with pytest.raises(UnsupportedModelError, match=r"'mine' has type MyLayer \(com.example"):
        run(root, np.zeros((1, 2)), tmp_path, shape=(2,))


def nhwc_pool() -> Any:
    pool = module("SpatialMaxPooling", kH=2, kW=2)
    pool.attr["format"].dataFormatValue = pb.NHWC
    return pool


@pytest.mark.parametrize(
    ("layer", "shape", "match"),
    [
        (module("Reshape", size=[4], batchMode=1), (4,), "batchMode false"),
        (module("SoftMax"), (3, 4), "normalises over dimension 0"),
        (module("LogSoftMax"), (3, 4), "takes a 2-d input"),
        (module("View", sizes=[2, -1]), (4,), "views the whole batch"),
        (nhwc_pool(), (2, 4, 4), "NHWC"),
        (module("Linear", weight=np.ones((2, 3)), inputSize=3, outputSize=2), (3,), None),
    ],
)
def test_module_misuse_is_a_clear_error(tmp_path: Path, layer, shape, match) -> None:
    root = module("Sequential", subs=[layer])
    if match is None:  # the control case converts
        run(root, np.zeros((1, *shape)), tmp_path, shape=shape)
        return
    with pytest.raises(UnsupportedModelError, match=match):
        run(root, np.zeros((1, *shape)), tmp_path, shape=shape)


@pytest.mark.parametrize(
    ("layers", "shape", "match"),
    [
        (
            [module("Linear", weight=np.ones((2, 3)), inputSize=3, outputSize=2)],
            (4,),
            "takes records of shape 3",
        ),
        ([module("Tanh"), module("Linear", weight=np.ones((2, 3)))], (4,), "has 3 inputs"),
        ([module("Tanh"), module("Reshape", size=[2, 2])], (5,), "makes records of 2x2"),
        ([module("Tanh"), module("Linear")], (3,), "no \\[out, in\\] weight"),
        ([module("Tanh"), module("View")], (3,), "no attribute 'sizes'"),
        ([module("Tanh"), module("JoinTable", dimension=1)], (3,), "not a record dimension"),
        (
            [module("ConcatTable", subs=[module("Tanh"), module("ReLU")]), module("Tanh")],
            (3,),
            "takes one tensor, got a table of 2",
        ),
        ([module("CAddTable")], (3,), None),
        (
            [
                module(
                    "SpatialConvolution",
                    weight=np.ones(5),
                    nInputPlane=1,
                    nOutputPlane=1,
                    kernelH=2,
                    kernelW=2,
                )
            ],
            (1, 3, 3),
            "weight is 5, expected 1x1x2x2",
        ),
        (
            [
                module(
                    "SpatialConvolution",
                    weight=np.ones(4),
                    nInputPlane=1,
                    nOutputPlane=1,
                    kernelH=2,
                    kernelW=2,
                )
            ],
            (2, 3, 3),
            "C = 1",
        ),
        (
            [
                module(
                    "SpatialBatchNormalization",
                    nOutput=2,
                    runningMean=np.zeros(3),
                    runningVar=np.ones(2),
                )
            ],
            (2, 3, 3),
            "runningMean has 3 values, expected 2",
        ),
    ],
)
def test_bad_models_fail_with_the_module_named(tmp_path: Path, layers, shape, match) -> None:
    root = module("Sequential", subs=layers)
    if match is None:
        [out] = run(root, np.ones((2, *shape)), tmp_path, shape=shape)  # a table of one is fine
        np.testing.assert_array_equal(out, np.ones((2, *shape)))
        return
    with pytest.raises((UnsupportedModelError, ConfigError), match=match):
        run(root, np.zeros((1, *shape)), tmp_path, shape=shape)


def test_graph_errors_name_the_node(tmp_path: Path) -> None:
    cycle = graph([module("Tanh", "a", pre=["b"]), module("Tanh", "b", pre=["a"])], ["a"], ["b"])
    with pytest.raises(UnsupportedModelError, match="has a cycle through"):
        run(cycle, np.zeros((1, 2)), tmp_path, shape=(2,))
    missing = graph([module("Tanh", "a"), module("Tanh", "b", pre=["zz"])], ["a"], ["b"])
    with pytest.raises(UnsupportedModelError, match="missing node 'zz'"):
        run(missing, np.zeros((1, 2)), tmp_path, shape=(2,))


def test_progress_reaches_the_total_past_unused_graph_nodes(tmp_path: Path) -> None:
    nodes = [module("Tanh", "a"), module("ReLU", "unused", pre=["a"]), module("Sigmoid", "b")]
    nodes[2].preModules.append("a")
    path = tmp_path / "g.model"
    path.write_bytes(graph(nodes, ["a"], ["b"]).SerializeToString())
    calls: list[tuple[int, int]] = []
    convert(path, (2,), lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # a, b, the graph, then the skipped one


def test_modules_with_the_same_name_get_distinct_onnx_names(tmp_path: Path) -> None:
    root = module("Sequential", subs=[module("Tanh", "output"), module("Tanh", "output")])
    [out] = run(root, np.full((1, 2), 0.5), tmp_path, shape=(2,))
    np.testing.assert_allclose(out, np.tanh(np.tanh(np.full((1, 2), 0.5))), atol=1e-6)


def test_shape_needed_when_the_first_module_does_not_say(tmp_path: Path) -> None:
    root = module("Sequential", subs=[module("Tanh")])
    with pytest.raises(ConfigError, match="give the record shape as data.shape"):
        run(root, np.zeros((1, 2)), tmp_path)
    [out] = run(root, np.zeros((1, 2)), tmp_path, shape=(2,))
    assert out.shape == (1, 2)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="missing.model"):
        read_module(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(UnsupportedModelError, match="not a BigDL model"):
        read_module(junk)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="has no moduleType"):
        read_module(empty)
    fc = module("Linear", "fc", inputSize=2, outputSize=2)
    fc.weight.CopyFrom(tensor(np.ones((2, 2))))
    fc.weight.tensorType = pb.QUANT
    with pytest.raises(UnsupportedModelError, match="quantized"):
        Module(fc, TensorReader(fc)).params()
    fc.weight.CopyFrom(pb.BigDLTensor(size=[2, 2], offset=1, id=5, storage={"id": 77}))
    with pytest.raises(UnsupportedModelError, match="storage 77, whose data is not in the file"):
        Module(fc, TensorReader(fc)).params()
    fc.weight.CopyFrom(tensor(np.ones((2, 2))))
    fc.weight.offset = 3
    with pytest.raises(UnsupportedModelError, match="does not fit its storage"):
        Module(fc, TensorReader(fc)).params()


def test_supported_types_cover_the_issue() -> None:
    wanted = {
        "Sequential",
        "StaticGraph",
        "Linear",
        "SpatialConvolution",
        "SpatialMaxPooling",
        "SpatialAveragePooling",
        "SpatialBatchNormalization",
        "ReLU",
        "Tanh",
        "Sigmoid",
        "SoftMax",
        "LogSoftMax",
        "Reshape",
        "View",
        "Dropout",
        "CAddTable",
        "JoinTable",
        "Identity",
    }
    assert wanted <= set(supported_types())


# ------------------------------------------------------------------ the backend


def test_backend_serves_the_lenet(lenet: Path) -> None:
    x = digits(3, seed=4)
    with BigDLModel(str(lenet), ModelOptions(input_shape=(1, 28, 28))) as model:
        assert model.backend == "bigdl"
        assert model.inputs[0].shape == (None, 1, 28, 28)
        assert model.outputs[0].shape == (None, 5)
        out = model.predict({"input": x})["output"]
    np.testing.assert_allclose(out, lenet_numpy(lenet, x), rtol=0, atol=1e-5)


def test_openvino_engine_runs_the_converted_model(lenet: Path) -> None:
    x = np.random.default_rng(3).random((3, 1, 28, 28), np.float32)
    options = ModelOptions(input_shape=(1, 28, 28), engine_type="openvino")
    with BigDLModel(str(lenet), options) as model:
        out = next(iter(model.predict({model.inputs[0].name: x}).values()))
    np.testing.assert_allclose(out, lenet_numpy(lenet, x), rtol=0, atol=1e-4)
