"""Clients of the original system work unchanged.

``ZooInputQueue`` / ``ZooOutputQueue`` below build and read payloads the way the Analytics Zoo
v0.10 Python client does (``zoo.serving.client`` and ``zoo.serving.schema``): a pyarrow record
batch with a four-row struct per tensor, base64, ``XADD uri data``; results read with ``HGETALL
cluster-serving_<stream>:<uri>`` and decoded from base64 Arrow, ``"NaN"`` for a failed record.
Served answers are compared with ONNX Runtime's own output. The seed-era protocol (stream
``image_stream``, fields ``uri`` and ``image``, results in ``result:<uri>``) is checked too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import InputQueue, OutputQueue

RESULT_PREFIX = "cluster-serving_"
STREAM = "serving_stream"  # the only stream the original client's OutputQueue reads
WAIT_S = 15.0


# ---------------------------------------------------------------- the v0.10 client, as it was


def _tensor_type() -> Any:
    return pa.struct(
        [
            pa.field("indiceData", pa.list_(pa.int32())),
            pa.field("indiceShape", pa.list_(pa.int32())),
            pa.field("data", pa.list_(pa.float32())),
            pa.field("shape", pa.list_(pa.int32())),
        ]
    )


def field_and_data(key: str, value: Any) -> tuple[Any, Any]:
    """``zoo.serving.schema.get_field_and_data``: one Arrow column per input."""
    import cv2

    if isinstance(value, list):
        if isinstance(value[0], str):  # a string tensor, joined by |
            return pa.field(key, pa.string()), pa.array(["|".join(value)])
        # a sparse tensor: [indices, values, shape]; indices go through float32 as they did
        indices = value[0].astype("float32").flatten()
        rows = [
            {"indiceData": indices},
            {"indiceShape": value[0].shape},
            {"data": value[1]},
            {"shape": value[2]},
        ]
        return pa.field(key, _tensor_type()), pa.array(rows, type=_tensor_type())
    if isinstance(value, str):  # an image path: read and re-encoded as JPEG
        encoded = cv2.imencode(".jpg", cv2.imread(value))[1]
        return pa.field(key, pa.string()), pa.array([base64.b64encode(encoded).decode("utf-8")])
    if isinstance(value, dict):  # {"b64": ...}
        return pa.field(key, pa.string()), pa.array([value["b64"]])
    # an ndarray: a dense tensor in four rows, one child filled per row
    rows = [
        {"indiceData": []},
        {"indiceShape": []},
        {"data": value.astype("float32").flatten()},
        {"shape": np.array(value.shape)},
    ]
    return pa.field(key, _tensor_type()), pa.array(rows, type=_tensor_type())


class ZooInputQueue:
    """``zoo.serving.client.InputQueue`` of v0.10: enqueue(uri, **data) -> XADD uri data."""

    def __init__(self, url: str, name: str = STREAM) -> None:
        import redis

        self.name = name
        self.db = redis.StrictRedis.from_url(url)
        # the original printed "redis group exist, will not create new one" on failure
        with contextlib.suppress(Exception):
            self.db.xgroup_create(name, "serving")

    def enqueue(self, uri: str, **data: Any) -> None:
        self.db.xadd(self.name, {"uri": uri, "data": self.data_to_b64(**data)})

    def data_to_b64(self, **data: Any) -> str:
        sink = pa.BufferOutputStream()
        fields, arrays = zip(*(field_and_data(k, v) for k, v in data.items()))
        schema = pa.schema(list(fields))
        batch = pa.RecordBatch.from_arrays(list(arrays), schema=schema)
        writer = pa.RecordBatchStreamWriter(sink, batch.schema)
        writer.write_batch(batch)
        writer.close()
        return base64.b64encode(sink.getvalue().to_pybytes()).decode("utf-8")

    def close(self) -> None:
        self.db.close()


class ZooOutputQueue:
    """``zoo.serving.client.OutputQueue`` of v0.10: query() and dequeue() over result hashes."""

    def __init__(self, url: str, name: str = STREAM) -> None:
        import redis

        self.name = name
        self.db = redis.StrictRedis.from_url(url)

    def query(self, uri: str) -> Any:
        res_dict = self.db.hgetall(RESULT_PREFIX + self.name + ":" + uri)
        if not res_dict:
            return "[]"
        s = res_dict[b"value"].decode("utf-8")
        if s == "NaN":
            return s
        return self.get_ndarray_from_b64(s)

    def dequeue(self) -> dict[str, Any]:
        decoded = {}
        for res in self.db.keys(RESULT_PREFIX + self.name + ":*"):
            res_dict = self.db.hgetall(res.decode("utf-8"))
            res_id = res.decode("utf-8").split(":")[1]
            value = res_dict[b"value"].decode("utf-8")
            decoded[res_id] = value if value == "NaN" else self.get_ndarray_from_b64(value)
            self.db.delete(res)
        return decoded

    def get_ndarray_from_b64(self, b64str: str) -> Any:
        buffer = pa.BufferReader(base64.b64decode(b64str)).read_buffer()
        batches = list(pa.ipc.open_stream(buffer))
        assert len(batches) > 0
        if len(batches) == 1:
            return self.get_ndarray_from_record_batch(batches[0])
        return [self.get_ndarray_from_record_batch(b) for b in batches]

    @staticmethod
    def get_ndarray_from_record_batch(record_batch: Any) -> np.ndarray:
        data = record_batch[0].to_numpy()
        shape = [i for i in record_batch[1].to_pylist() if i]
        return data.reshape(shape)

    def wait(self, uri: str) -> Any:
        """What the original predict() did: query until the result is there."""
        deadline = time.monotonic() + WAIT_S
        while isinstance(result := self.query(uri), str) and result == "[]":
            assert time.monotonic() < deadline, f"no result for {uri} in {WAIT_S}s"
            time.sleep(0.01)
        return result

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def zoo(redis_url: str) -> Any:
    inq, outq = ZooInputQueue(redis_url), ZooOutputQueue(redis_url)
    yield inq, outq
    inq.close()
    outq.close()


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def two_input_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model of two inputs, x [N, 4] and y [N, 6]: softmax(Wx + Vy)."""
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 5)
            self.b = torch.nn.Linear(6, 5)

        def forward(self, x: Any, y: Any) -> Any:
            return torch.softmax(self.a(x) + self.b(y), dim=1)

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwoInputs().eval(),
            (torch.zeros(1, 4), torch.zeros(1, 6)),
            str(path),
            dynamo=False,
            input_names=["x", "y"],
            output_names=["prob"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}, "prob": {0: "N"}},
            opset_version=17,
        )
    return path.parent


def _onnx(model_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(next(model_dir.glob("*.onnx"))), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)[0]


# ---------------------------------------------------------------- Analytics Zoo v0.9-v0.11


def test_tensors_images_and_sparse_decode_to_the_framework_output(
    serve: Callable[..., Any], onnx_model_dir: Path, zoo: Any, tmp_path: Path
) -> None:
    serve(onnx_model_dir, **{"data.stream": STREAM})  # top_n 3: zoo records still get tensors
    inq, outq = zoo
    rng = np.random.default_rng(7)
    dense = rng.standard_normal((3, 32, 32)).astype(np.float32)
    coords = np.array([[0, 1, 2, 2], [3, 0, 31, 5], [4, 9, 0, 31]])  # [ndim, nnz]
    values = np.array([5.0, -2.0, 7.5, 1.0], np.float32)
    sparse = np.zeros((3, 32, 32), np.float32)
    sparse[tuple(coords)] = values
    image = jpeg(11)
    path = tmp_path / "dog.jpg"
    path.write_bytes(jpeg(12))
    import cv2

    path_jpeg = cv2.imencode(".jpg", cv2.imread(str(path)))[1].tobytes()

    inq.enqueue("dense", t=dense)
    inq.enqueue("sparse", t=[coords, values, np.array([3, 32, 32])])
    inq.enqueue("b64-image", t={"b64": base64.b64encode(image).decode()})
    inq.enqueue("path-image", t=str(path))

    expected = onnx_direct(
        onnx_model_dir,
        np.stack([dense, sparse, decoded_image(image), decoded_image(path_jpeg)]),
    )
    for uri, want in zip(["dense", "sparse", "b64-image", "path-image"], expected):
        got = outq.wait(uri)
        assert isinstance(got, np.ndarray) and got.shape == (10,), uri
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=uri)


def test_bad_payloads_get_nan_and_the_server_keeps_serving(
    serve: Callable[..., Any], onnx_model_dir: Path, zoo: Any, redis_client: Any
) -> None:
    serve(onnx_model_dir, **{"data.stream": STREAM})
    inq, outq = zoo
    inq.enqueue("wrong-shape", t=np.ones((3, 16, 16), np.float32))
    inq.enqueue("strings", t=["a", "b"])
    redis_client.xadd(STREAM, {"uri": "not-arrow", "data": base64.b64encode(b"junk")})
    redis_client.xadd(STREAM, {"uri": "not-base64", "data": "%%%"})
    inq.enqueue("good", t=np.zeros((3, 32, 32), np.float32))
    for uri in ("wrong-shape", "strings", "not-arrow", "not-base64"):
        assert outq.wait(uri) == "NaN", uri
    want = onnx_direct(onnx_model_dir, np.zeros((1, 3, 32, 32), np.float32))[0]
    np.testing.assert_allclose(outq.wait("good"), want, rtol=0, atol=1e-5)
    ttl_ms = redis_client.pttl(f"{RESULT_PREFIX}{STREAM}:good")
    assert 0 < ttl_ms <= 3600 * 1000  # data.result_ttl_s on every result key
    assert redis_client.xlen(STREAM) == 0  # acknowledged and deleted, as native records


def test_several_inputs_in_model_input_order_and_dequeue(
    serve: Callable[..., Any], two_input_dir: Path, zoo: Any, redis_url: str
) -> None:
    serve(two_input_dir, **{"data.stream": STREAM, "data.shape": "4"})
    inq, outq = zoo
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((3, 4)).astype(np.float32)
    ys = rng.standard_normal((3, 6)).astype(np.float32)
    for i in range(3):  # column names differ from the model's: order is what counts
        inq.enqueue(f"r{i}", first=xs[i], second=ys[i])
    with InputQueue(url=redis_url, name=STREAM) as native:  # a native record in the same run
        native_uri = native.enqueue("native", x=xs[0], y=ys[0])
    expected = _onnx(two_input_dir, {"x": xs, "y": ys})
    deadline = time.monotonic() + WAIT_S
    while len(outq.db.keys(RESULT_PREFIX + STREAM + ":*")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    results = outq.dequeue()
    assert sorted(results) == ["r0", "r1", "r2"]
    for i in range(3):
        np.testing.assert_allclose(results[f"r{i}"], expected[i], rtol=0, atol=1e-5)
    assert outq.dequeue() == {}  # dequeue deletes what it returns
    with OutputQueue(url=redis_url, name=STREAM) as native_out:
        served = native_out.query(native_uri, timeout=WAIT_S)
    assert_top_n(served, expected[0], 3)  # the native record got its native answer


# ---------------------------------------------------------------- the seed era


def test_seed_era_image_round_trip(
    serve: Callable[..., Any], onnx_model_dir: Path, redis_client: Any
) -> None:
    serve(onnx_model_dir, **{"data.stream": "image_stream"})
    image = jpeg(21, 32, 32)  # resized by the client, as the seed's did
    redis_client.xadd("image_stream", {"uri": "cat", "image": base64.b64encode(image)})
    redis_client.xadd("image_stream", {"uri": "broken", "image": base64.b64encode(b"no jpeg")})
    deadline = time.monotonic() + WAIT_S
    while not (redis_client.exists("result:cat") and redis_client.exists("result:broken")):
        assert time.monotonic() < deadline, "no seed-era results"
        time.sleep(0.01)
    value = json.loads(redis_client.hget("result:cat", "value"))
    scores = onnx_direct(onnx_model_dir, decoded_image(image)[None])[0]
    assert len(value) == 3 and all(len(pair) == 2 for pair in value)
    assert_top_n(value, scores, 3)
    assert redis_client.hget("result:broken", "value") == b"NaN"
    assert 0 < redis_client.pttl("result:cat") <= 3600 * 1000
