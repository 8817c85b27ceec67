"""The Analytics Zoo wire formats: the original system's own payloads decode as documented in
../shared/fixtures/README.md, both Arrow IPC framings are read, and what we encode decodes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from zoo_serving import keys
from zoo_serving.errors import (
    DecodeError,
    DtypeError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeError,
)
from zoo_serving.serving.postprocess import encode_seed_result
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire import (
    FAILED,
    NATIVE,
    SEED,
    ZOO,
    decode_record,
    encode_failure,
    reply_kind,
    result_key,
)
from zoo_serving.wire.zoo import (
    decode_payload,
    decode_result,
    densify,
    encode_payload,
    encode_result,
)


@pytest.fixture(scope="module")
def wire(fixtures_dir: Path) -> Path:
    return fixtures_dir / "zoo_wire"


# ---------------------------------------------------------------- the original payloads


def test_ndarray_2_is_the_documented_dense_tensor(wire: Path) -> None:
    (item,) = decode_payload((wire / "ndarray-2-base64").read_bytes())
    assert (item.name, item.kind) == ("t", "tensor")
    assert item.value.dtype == np.float32
    np.testing.assert_array_equal(item.value, np.array([[1.0], [2.0]], np.float32))


def test_ndarray_128_in_the_older_framing_is_a_vector_of_128(wire: Path) -> None:
    raw = base64.b64decode((wire / "ndarray-128-base64").read_bytes())
    assert raw[:4] != b"\xff\xff\xff\xff"  # no continuation marker: the pre-0.15 framing
    (item,) = decode_payload((wire / "ndarray-128-base64").read_bytes())
    assert (item.name, item.kind, item.value.shape) == ("t", "tensor", (128,))
    # the values the struct's data child holds, in order
    batch = pa.ipc.open_stream(raw).read_next_batch()
    data = [v for row in batch.column(0).to_pylist() for v in (row["data"] or [])]
    np.testing.assert_array_equal(item.value, np.array(data, np.float32))
    assert data[:3] == [6.0, 87.0, 15.0]


def test_arrow_bytes_is_the_documented_sparse_tensor(wire: Path) -> None:
    (item,) = decode_payload((wire / "arrowBytes").read_bytes())
    assert (item.name, item.kind) == ("my-img", "tensor")
    dense = item.value
    assert dense.shape == (100, 10000) and dense.dtype == np.float32
    # indiceData [1,1,2,2,2,3] with indiceShape [3,2]: one (row, col) pair per value
    assert np.argwhere(dense).tolist() == [[1, 1], [2, 2], [2, 3]]
    assert [dense[1, 1], dense[2, 2], dense[2, 3]] == [3.0, 4.0, 5.0]
    assert np.count_nonzero(dense) == 3


def test_image_arrow_holds_the_documented_jpeg(wire: Path) -> None:
    (item,) = decode_payload((wire / "image-3_224_224-arrow-base64").read_bytes())
    jpeg = base64.b64decode((wire / "image-3_224_224-jpg-base64").read_bytes())
    assert (item.name, item.kind) == ("t", "image")
    assert item.value == jpeg and jpeg[:2] == b"\xff\xd8"


def test_image_arrow_decodes_to_a_224_image_as_the_original_server(wire: Path) -> None:
    import cv2

    from zoo_serving.backends.base import TensorSpec

    request = decode_record(
        {b"uri": b"x", b"data": (wire / "image-3_224_224-arrow-base64").read_bytes()}, ZOO
    )
    spec = TensorSpec("input", np.dtype(np.float32), (None, 3, 224, 224))
    arr = Preprocessor([spec], (3, 224, 224))(request, by_position=True)["input"]
    jpeg = base64.b64decode((wire / "image-3_224_224-jpg-base64").read_bytes())
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (224, 224, 3)  # no resize: it was 224x224 already
    np.testing.assert_array_equal(arr, bgr.transpose(2, 0, 1).astype(np.float32))  # BGR CHW


def test_jpg_base64_is_a_224_jpeg_and_a_seed_era_image_field(wire: Path) -> None:
    import cv2

    text = (wire / "image-3_224_224-jpg-base64").read_bytes()
    request = decode_record({b"uri": b"cat", b"image": text}, SEED)
    (raw,) = request.inputs
    assert raw.kind == "image" and raw.data == base64.b64decode(text)
    image = cv2.imdecode(np.frombuffer(raw.data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (224, 224, 3)


def test_fixture_records_become_float32_requests(wire: Path) -> None:
    request = decode_record({b"uri": b"u1", b"data": (wire / "ndarray-2-base64").read_bytes()}, ZOO)
    (raw,) = request.inputs
    assert request.uri == b"u1"
    assert (raw.kind, raw.dtype, raw.shape) == ("tensor", "<f4", (2, 1))
    assert np.frombuffer(raw.data, "<f4").tolist() == [1.0, 2.0]


# ---------------------------------------------------------------- round trips and framings


@pytest.mark.parametrize("legacy", [False, True], ids=["continuation", "legacy"])
def test_round_trip_in_both_framings(legacy: bool) -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((3, 4, 5)).astype(np.float32)
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg"
    payload = encode_payload(
        {
            "a": dense,
            "b": (np.array([[0, 2], [1, 0]]), [7.0, 8.0], [3, 2]),
            "c": jpeg,
            "d": ["x", "yy", "z"],
        },
        legacy_framing=legacy,
    )
    head = base64.b64decode(payload)[:4]
    assert (head == b"\xff\xff\xff\xff") is not legacy
    a, b, c, d = decode_payload(payload)
    np.testing.assert_array_equal(a.value, dense)
    np.testing.assert_array_equal(b.value, [[0, 7], [0, 0], [8, 0]])
    assert (c.kind, c.value) == ("image", jpeg)
    assert (d.kind, d.value) == ("strings", ["x", "yy", "z"])


def test_scalar_and_zero_d_tensors() -> None:
    (item,) = decode_payload(encode_payload({"s": np.float32(2.5)}))
    assert item.value.shape == () and float(item.value) == 2.5


def test_result_round_trip_like_the_original_client() -> None:
    prob = np.array([0.1, 0.7, 0.2], np.float32)
    assert decode_result(encode_result({"prob": prob})).tolist() == pytest.approx(prob.tolist())
    two = decode_result(encode_result({"a": np.ones((2, 3), np.float32), "b": np.zeros(4)}))
    assert isinstance(two, list) and [x.shape for x in two] == [(2, 3), (4,)]
    assert decode_result(FAILED) is None


def test_result_layout_is_numel_rows_with_the_shape_first() -> None:
    blob = encode_result({"out": np.arange(6, dtype=np.float64).reshape(2, 3)})
    (batch,) = list(pa.ipc.open_stream(base64.b64decode(blob)))
    assert batch.schema.names == ["data", "shape"]
    assert (batch.schema.field("data").type, batch.schema.field("shape").type) == (
        pa.float32(),
        pa.int32(),
    )
    assert batch.num_rows == 6
    assert batch.column(1).to_pylist() == [2, 3, None, None, None, None]


def test_seed_result_is_top_n_pairs() -> None:
    scores = np.array([0.1, 0.6, 0.05, 0.25], np.float32)
    value = json.loads(encode_seed_result({"prob": scores}, 2))
    assert [i for i, _ in value] == [1, 3]
    assert [p for _, p in value] == pytest.approx([0.6, 0.25])
    assert json.loads(encode_seed_result({"prob": scores}, 0)) == pytest.approx(scores.tolist())


# ---------------------------------------------------------------- which protocol, where to


def test_reply_kind_per_record() -> None:
    assert reply_kind({b"uri": b"a", b"zs": b"1", b"data": b"x"}) == NATIVE
    assert reply_kind({b"uri": b"a", b"data": b"x"}) == ZOO
    assert reply_kind({b"uri": b"a", b"image": b"x"}) == SEED
    assert reply_kind({b"uri": b"a", b"image:t": b"x"}) == NATIVE
    assert reply_kind({b"uri": b"a"}) == NATIVE


def test_result_keys_and_failures() -> None:
    assert result_key(ZOO, "serving_stream", b"u") == b"cluster-serving_serving_stream:u"
    assert result_key(SEED, "image_stream", b"u") == b"result:u"
    assert result_key(NATIVE, "s", b"u") == keys.result("s", b"u")
    assert encode_failure(ZOO, ValueError("x")) == b"NaN"
    assert encode_failure(SEED, ValueError("x")) == b"NaN"
    assert json.loads(encode_failure(NATIVE, ValueError("x")))["kind"] == "error"


def test_seed_record_is_the_jpeg() -> None:
    jpeg = b"\xff\xd8\xff jpeg"
    request = decode_record({b"uri": b"cat", b"image": base64.b64encode(jpeg)}, SEED)
    assert request.uri == b"cat"
    assert [(r.kind, r.data) for r in request.inputs] == [("image", jpeg)]


# ---------------------------------------------------------------- what is refused, and how


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"not base64 at all!", DecodeError, "not base64"),
        (base64.b64encode(b"garbage bytes, not Arrow"), DecodeError, "not an Arrow IPC stream"),
        (base64.b64encode(b"ARROW1\x00\x00"), DecodeError, "Arrow IPC file"),
    ],
)
def test_bad_payloads_name_the_problem(data: bytes, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        decode_payload(data)


def test_string_tensors_decode_but_are_refused_as_model_input() -> None:
    payload = encode_payload({"words": ["a", "b"]})
    assert decode_payload(payload)[0].value == ["a", "b"]
    with pytest.raises(DtypeError, match="string tensor of 2 strings"):
        decode_record({b"uri": b"u", b"data": payload}, ZOO)


def test_dense_shape_that_does_not_hold_the_data() -> None:
    tensor = pa.struct(
        [pa.field("data", pa.list_(pa.float32())), pa.field("shape", pa.list_(pa.int32()))]
    )
    column = pa.array([{"data": [1.0, 2.0, 3.0]}, {"shape": [2, 2]}], type=tensor)
    batch = pa.RecordBatch.from_arrays([column], names=["t"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    with pytest.raises(ShapeError, match=r"shape \[2, 2\] holds 4 values, 'data' has 3"):
        decode_payload(base64.b64encode(sink.getvalue().to_pybytes()))


def test_sparse_errors_and_limits() -> None:
    with pytest.raises(ShapeError, match="outside shape"):
        densify("x", [0, 5], [2, 1], [1.0], [2, 2])
    with pytest.raises(ShapeError, match="fits neither"):
        densify("x", [0, 1, 0, 1, 0, 1], [3, 2], [1.0, 2.0], [2, 2])
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
        densify("x", [0, 0], [2, 1], [1.0], [100_000, 100_000])
    payload = encode_payload({"big": (np.array([[0], [0]]), [1.0], [50_000, 50_000])})
    with pytest.raises(PayloadTooLargeError):
        decode_payload(payload, max_bytes=1 << 20)


def test_record_without_uri() -> None:
    with pytest.raises(MissingInputError, match="uri"):
        decode_record({b"data": encode_payload({"t": np.ones(2)})}, ZOO)
