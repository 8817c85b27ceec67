"""Caffe files as BigDL's Caffe persister writes them, converted and run by ONNX Runtime, against
torch over the weights as BigDL held them.

BigDL's ``CaffePersister.persist(prototxt, caffemodel, graph, useV2)`` (package
``com.intel.analytics.bigdl.utils.caffe``: ``V1LayerConverter`` / ``LayerConverter``) copies each
weight's storage into ``data`` and describes it like this:

- ``useV2 = false`` (V1 ``layers { type: CONVOLUTION ... }``): no ``shape``. A convolution's weight
  gets ``num = nOutputPlane`` and ``channels = nInputPlane / group``, height and width left 0:
  dims (6, 2, 0, 0) for 72 values; a deconvolution's ``num = nInputPlane`` and
  ``channels = nOutputPlane / group``; an InnerProduct's weight only ``width = inputSize``:
  (0, 0, 0, 432); biases no dims at all.
- ``useV2 = true`` (``layer { type: "Convolution" ... }``): a ``shape`` of BigDL's own tensor (a
  convolution's 5-D (group, out / group, in / group, kH, kW), a deconvolution's (group,
  in / group, out / group, kH, kW), a Linear's (out, in)) and the same num/channels/width
  beside it.

The V1 dims do not hold their values. BigDL's ``CaffeLoader`` fills each weight in the shape the
layer's parameters give and checks only the count, and so does the converter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from unit.test_caffe import ATOL, run_onnx
from zoo_serving.backends.caffe import caffe_pb2
from zoo_serving.errors import ModelError

pb2: Any = caffe_pb2
RECORD = (4, 8, 8)  # one input record, CHW


def bigdl_weights(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A net's parameters in BigDL's own tensor shapes: SpatialConvolution(4, 6, kW=2, kH=3,
    pad 1, group 2) -> ReLU -> SpatialFullConvolution(6, 6, 2x2, stride 2, group 2) ->
    SpatialMaxPooling(2, 2) -> Linear(432, 10) -> Linear(10, 3, withBias = false)."""
    rng = np.random.default_rng(seed)
    return {
        "conv": {"weight": rng.normal(0, 0.4, (2, 3, 2, 3, 2)), "bias": rng.normal(0, 0.1, 6)},
        "deconv": {"weight": rng.normal(0, 0.3, (2, 3, 3, 2, 2)), "bias": rng.normal(0, 0.1, 6)},
        "ip1": {"weight": rng.normal(0, 0.05, (10, 432)), "bias": rng.normal(0, 0.1, 10)},
        "ip2": {"weight": rng.normal(0, 0.3, (3, 10))},
    }


# name, BigDL module -> Caffe layer type (V1 enum, V2 string), the parameters BigDL writes
LAYERS = [
    ("conv", "CONVOLUTION", "Convolution", "convolution_param { num_output: 6 group: 2 "
     "kernel_w: 2 kernel_h: 3 stride_w: 1 stride_h: 1 pad_w: 1 pad_h: 1 bias_term: true }"),
    ("relu", "RELU", "ReLU", ""),
    ("deconv", "DECONVOLUTION", "Deconvolution", "convolution_param { num_output: 6 group: 2 "
     "kernel_w: 2 kernel_h: 2 stride_w: 2 stride_h: 2 pad_w: 0 pad_h: 0 bias_term: true }"),
    ("pool", "POOLING", "Pooling", "pooling_param { pool: MAX kernel_w: 2 kernel_h: 2 "
     "stride_w: 2 stride_h: 2 pad_w: 0 pad_h: 0 }"),
    ("ip1", "INNER_PRODUCT", "InnerProduct", "inner_product_param { num_output: 10 }"),
    ("ip2", "INNER_PRODUCT", "InnerProduct", "inner_product_param { num_output: 3 "
     "bias_term: false }"),
]  # fmt: skip


def _describe(blob: Any, layer: str, param: str, value: np.ndarray, v2: bool) -> None:
    """The dims BigDL's persister gives a weight or bias blob of ``layer``."""
    if v2:
        blob.shape.dim.extend(value.shape)
    if param != "weight":
        return
    if value.ndim == 5:
        # convolution (group, out / group, in / group, kH, kW): num = out, channels = in / group;
        # deconvolution (group, in / group, out / group, kH, kW): num = in, channels = out / group
        blob.num, blob.channels = value.shape[0] * value.shape[1], value.shape[2]
    else:  # Linear (out, in)
        blob.width = value.shape[1]


def persist_like_bigdl(directory: Path, *, v2: bool) -> Path:
    """The net of :func:`bigdl_weights` as ``CaffePersister.persist(..., useV2 = v2)`` writes it:
    tops named ``<layer>0``, the weights in the .caffemodel, the same net without blobs in the
    .prototxt. (The input declaration is ours: the persister's net reads ``data``.)"""
    weights = bigdl_weights()
    net = pb2.NetParameter(name="bigdl", input=["data"], input_dim=[1, *RECORD])
    bottom = "data"
    for name, v1_type, v2_type, params in LAYERS:
        layer = net.layer.add() if v2 else net.layers.add()
        text_format.Parse(params, layer)
        layer.name, layer.bottom[:], layer.top[:] = name, [bottom], [f"{name}0"]
        if v2:
            layer.type = v2_type
        else:
            layer.type = pb2.V1LayerParameter.LayerType.Value(v1_type)
        bottom = f"{name}0"
        for param, value in weights.get(name, {}).items():
            blob = layer.blobs.add(data=np.asarray(value, np.float32).ravel().tolist())
            _describe(blob, name, param, value, v2)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bigdl.caffemodel").write_bytes(net.SerializeToString())
    for layer in [*net.layer, *net.layers]:
        del layer.blobs[:]
    (directory / "bigdl.prototxt").write_text(text_format.MessageToString(net))
    return directory


def torch_forward(x: np.ndarray, weights: dict) -> np.ndarray:
    """The same net in torch (float64), from BigDL's tensors."""
    w = {
        layer: {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
        for layer, params in weights.items()
    }
    y = torch.from_numpy(x.astype(np.float64))
    conv, deconv = w["conv"], w["deconv"]
    y = F.conv2d(y, conv["weight"].reshape(6, 2, 3, 2), conv["bias"], padding=1, groups=2)
    y = F.relu(y)
    y = F.conv_transpose2d(
        y, deconv["weight"].reshape(6, 3, 2, 2), deconv["bias"], stride=2, groups=2
    )
    y = F.max_pool2d(y, 2, 2).flatten(1)
    y = F.linear(y, w["ip1"]["weight"], w["ip1"]["bias"])
    return F.linear(y, w["ip2"]["weight"]).numpy()


@pytest.mark.parametrize("v2", [False, True], ids=["v1-legacy-dims", "v2-bigdl-shapes"])
def test_bigdl_persisted_net_matches_torch(v2: bool, tmp_path: Path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    directory = persist_like_bigdl(tmp_path, v2=v2)
    model = convert(directory / "bigdl.prototxt", directory / "bigdl.caffemodel")
    x = np.random.default_rng(1).normal(0, 1, (3, *RECORD))
    got = run_onnx(model, {"data": x})
    assert list(got) == ["ip20"]
    np.testing.assert_allclose(got["ip20"], torch_forward(x, bigdl_weights()), rtol=0, atol=ATOL)


def test_bigdl_persisted_net_is_served_by_the_caffe_backend(tmp_path: Path) -> None:
    from zoo_serving.backends import load_model

    directory = persist_like_bigdl(tmp_path, v2=False)
    x = np.random.default_rng(2).normal(0, 1, (2, *RECORD)).astype(np.float32)
    with load_model(directory) as model:
        assert model.backend == "caffe"
        got = model.predict({"data": x})["ip20"]
    np.testing.assert_allclose(got, torch_forward(x, bigdl_weights()), rtol=0, atol=ATOL)


def test_blob_dims_are_kept_where_they_hold_their_values() -> None:
    """Only dims that do not hold the values are set aside; a legacy 4-D blob keeps its shape."""
    from zoo_serving.backends.caffe.convert import blob_array, blob_dims

    values = np.arange(48, dtype=np.float32).tolist()
    bigdl = pb2.BlobProto(data=values, num=4, channels=3)
    assert blob_dims(bigdl) == (4, 3, 0, 0) and blob_array(bigdl).shape == (48,)
    legacy = pb2.BlobProto(data=values, num=4, channels=3, height=2, width=2)
    assert blob_array(legacy).shape == (4, 3, 2, 2)
    shaped = pb2.BlobProto(data=values, shape=pb2.BlobShape(dim=[1, 4, 3, 2, 2]))
    assert blob_array(shaped).shape == (1, 4, 3, 2, 2)
    assert blob_dims(pb2.BlobProto(data=values)) is None


def test_values_that_fit_neither_the_dims_nor_the_layer_name_both(tmp_path: Path) -> None:
    from zoo_serving.backends.caffe.convert import convert

    directory = persist_like_bigdl(tmp_path, v2=False)
    caffemodel = directory / "bigdl.caffemodel"
    net = pb2.NetParameter.FromString(caffemodel.read_bytes())
    del net.layers[0].blobs[0].data[-1]  # the conv's weights, one value short
    caffemodel.write_bytes(net.SerializeToString())
    with pytest.raises(ModelError) as info:
        convert(directory / "bigdl.prototxt", caffemodel)
    message = str(info.value)
    assert "'conv' (Convolution): weights (blob 0) has 71 values" in message
    assert "its dims (6, 2, 0, 0)" in message and "needs (6, 2, 3, 2), 72 values" in message
