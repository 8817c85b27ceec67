"""The native wire format: requests and results round-trip bit-exact; bad records fail clearly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zoo_serving import errors
from zoo_serving.errors import DecodeError, InputError, MissingInputError, ZooServingError
from zoo_serving.wire.native import (
    VIEW_MIN_BYTES,
    RawInput,
    Request,
    ShmRef,
    decode_request,
    decode_result,
    encode_error,
    encode_exception,
    encode_request,
    encode_tensors,
    encode_topn,
)

DTYPES = ["float32", "float64", "int8", "uint16", "int64", "bool", "float16", "complex64"]
SHAPES = [(), (7,), (2, 3, 4, 5)]


def _sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.asarray(_draw(dtype, shape, seed))


def _draw(dtype: str, shape: tuple[int, ...], seed: int) -> object:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        real = rng.standard_normal(shape) * 1e3
        imag = rng.standard_normal(shape) * 1e3
        return (real + 1j * imag).astype(dt)
    return (rng.standard_normal(shape) * 1e3).astype(dt)


def _array(raw: RawInput) -> np.ndarray:
    assert raw.kind == "tensor"
    assert raw.dtype is not None and raw.shape is not None
    return np.frombuffer(raw.data, dtype=np.dtype(raw.dtype)).reshape(raw.shape)


def _assert_bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_request_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    arr = _sample(dtype, shape)
    fields = encode_request("rec-1", {"t": arr})
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in fields.items())
    req = decode_request(fields)
    assert isinstance(req, Request)
    assert req.uri == b"rec-1"
    assert req.deadline_ms is None
    assert [r.name for r in req.inputs] == ["t"]
    _assert_bit_exact(_array(req.inputs[0]), arr)


def test_non_contiguous_tensor_is_sent_in_c_order() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T
    assert not arr.flags.c_contiguous
    req = decode_request(encode_request("u", {"x": arr}))
    _assert_bit_exact(_array(req.inputs[0]), arr)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bool", "int64", ">f8", "datetime64[s]"])
def test_views_send_large_tensors_without_a_copy(dtype: str) -> None:
    big = np.zeros((2, VIEW_MIN_BYTES), dtype=dtype)
    small = np.ones(4, dtype=np.float32)
    strided = np.zeros((4, VIEW_MIN_BYTES), dtype=np.uint8)[:, ::2]
    fields = encode_request("u", {"big": big, "small": small, "strided": strided}, views=True)
    sent = fields[b"tensor:big"]
    if big.dtype.kind == "M":  # no buffer protocol: copied
        assert isinstance(sent, bytes)
    else:
        assert isinstance(sent, memoryview) and np.shares_memory(np.asarray(sent), big)
    assert isinstance(fields[b"tensor:small"], bytes)
    assert isinstance(fields[b"tensor:strided"], bytes)
    req = decode_request({k: bytes(v) for k, v in fields.items()})
    for raw, arr in zip(req.inputs, (big, small, strided)):
        _assert_bit_exact(_array(raw), arr)


def test_image_request_keeps_bytes() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3
    req = decode_request(encode_request(b"img-7", {"image": jpeg}))
    assert req.uri == b"img-7"
    (raw,) = req.inputs
    assert raw == RawInput("image", "image", jpeg)
    assert raw.dtype is None and raw.shape is None


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_image_accepts_bytes_like(wrap: type) -> None:
    req = decode_request(encode_request("u", {"im": wrap(b"\x89PNG....")}))
    assert req.inputs[0].data == b"\x89PNG...."


def test_several_named_inputs_keep_their_order() -> None:
    inputs = {
        "zeta": _sample("float32", (3,)),
        "alpha": b"jpeg-bytes",
        "mid": _sample("int64", (2, 2)),
        "beta": _sample("bool", (5,)),
    }
    req = decode_request(encode_request("multi", inputs, deadline_ms=1_700_000_000_123))
    assert [r.name for r in req.inputs] == ["zeta", "alpha", "mid", "beta"]
    assert [r.kind for r in req.inputs] == ["tensor", "image", "tensor", "tensor"]
    assert req.inputs[1].data == b"jpeg-bytes"
    for raw in (req.inputs[0], req.inputs[2], req.inputs[3]):
        _assert_bit_exact(_array(raw), inputs[raw.name])  # type: ignore[arg-type]
    assert req.deadline_ms == 1_700_000_000_123


def test_unicode_uri_and_names() -> None:
    req = decode_request(encode_request("chat-猫", {"entrée": np.ones(2, np.float32)}))
    assert req.uri == "chat-猫".encode()
    assert req.inputs[0].name == "entrée"


def test_encode_rejects_no_inputs_and_bad_values() -> None:
    with pytest.raises(MissingInputError):
        encode_request("u", {})
    with pytest.raises(DecodeError, match="'x'"):
        encode_request("u", {"x": np.array(["a", None], dtype=object)})
    with pytest.raises(DecodeError, match="'x'.*list"):
        encode_request("u", {"x": [1, 2, 3]})


def _fields(**extra: bytes) -> dict[bytes, bytes]:
    out = {b"uri": b"u1", b"zs": b"1"}
    out.update({k.replace("__", ":").encode(): v for k, v in extra.items()})
    return out


@pytest.mark.parametrize(
    ("fields", "error", "fragment"),
    [
        ({b"zs": b"1", b"image:im": b"jpg"}, MissingInputError, "uri"),
        (_fields(), MissingInputError, "no payload"),
        (_fields(other=b"x"), MissingInputError, "image:<name>"),
        (_fields(tensor__t=b"\0" * 4, shape__t=b"1"), MissingInputError, "dtype:t"),
        (_fields(tensor__t=b"\0" * 4, dtype__t=b"<f4"), MissingInputError, "shape:t"),
        (_fields(tensor__t=b"\0" * 4, dtype__t=b"<f4", shape__t=b"2,x"), DecodeError, "2,x"),
        (_fields(tensor__t=b"\0" * 4, dtype__t=b"<f4", shape__t=b"-1"), DecodeError, "negative"),
        (_fields(image__im=b"jpg", deadline_ms=b"soon"), DecodeError, "deadline_ms"),
    ],
    ids=[
        "no-uri",
        "no-payload",
        "unknown-field-only",
        "no-dtype",
        "no-shape",
        "bad-shape-text",
        "negative-dim",
        "bad-deadline",
    ],
)
def test_decode_request_errors(
    fields: dict[bytes, bytes], error: type[InputError], fragment: str
) -> None:
    with pytest.raises(InputError) as info:
        decode_request(fields)
    assert type(info.value) is error
    assert fragment in str(info.value)


# ---------------------------------------------------------------- results


def test_topn_result_round_trip() -> None:
    pairs = [(281, 0.75), (285, 0.125), (3, 0.0625)]
    assert decode_result(encode_topn(pairs)) == [[281, 0.75], [285, 0.125], [3, 0.0625]]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**40), st.floats(allow_nan=True, allow_infinity=True)),
        max_size=8,
    )
)
def test_topn_bytes_are_what_json_writes(pairs: list[tuple[int, float]]) -> None:
    """The hand-written encoder gives exactly the generic JSON encoder's bytes."""
    value = [[i, p if math.isfinite(p) else str(p)] for i, p in pairs]
    expected = json.dumps({"v": 1, "kind": "topn", "value": value}, separators=(",", ":"))
    assert encode_topn(pairs) == expected.encode()
    decoded = decode_result(encode_topn(pairs))
    assert [i for i, _ in decoded] == [i for i, _ in pairs]


def test_topn_accepts_numpy_scalars() -> None:
    pairs = [(np.int64(4), np.float32(0.5))]
    blob = encode_topn(pairs)
    assert json.loads(blob)["value"] == [[4, 0.5]]
    assert decode_result(blob) == [[4, 0.5]]


def test_topn_non_finite_scores_survive() -> None:
    got = decode_result(encode_topn([(0, float("nan")), (1, float("inf"))]))
    assert isinstance(got, list)
    assert got[0][0] == 0 and np.isnan(got[0][1])
    assert got[1] == [1, float("inf")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("dtype", DTYPES)
def test_single_tensor_result_is_bit_exact(dtype: str, shape: tuple[int, ...]) -> None:
    arr = _sample(dtype, shape, seed=1)
    got = decode_result(encode_tensors({"out": arr}))
    assert isinstance(got, np.ndarray)
    _assert_bit_exact(got, arr)


def test_several_outputs_decode_to_a_dict_in_order() -> None:
    outputs = {
        "boxes": _sample("float32", (4, 4), seed=2),
        "labels": _sample("int64", (4,), seed=3),
        "mask": _sample("bool", (2, 3, 5), seed=4),
        "score": np.array(0.5, dtype=np.float64),
    }
    got = decode_result(encode_tensors(outputs))
    assert isinstance(got, dict)
    assert list(got) == list(outputs)
    for name, arr in outputs.items():
        _assert_bit_exact(got[name], arr)


def test_tensor_bytes_containing_newlines() -> None:
    arr = np.full((8,), 0x0A0A0A0A, dtype=np.uint32)  # every byte is b"\n"
    got = decode_result(encode_tensors({"o": arr}))
    assert isinstance(got, np.ndarray)
    _assert_bit_exact(got, arr)


def _error_classes() -> list[type[ZooServingError]]:
    out: list[type[ZooServingError]] = []
    todo = [ZooServingError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted((c for c in out if c.__module__ == errors.__name__), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_error_result_decodes_to_its_class(cls: type[ZooServingError]) -> None:
    got = decode_result(encode_error(cls.code, "input 'x': shape (2,) is wrong"))
    assert type(got) is cls
    assert isinstance(got, ZooServingError)
    assert got.message == "input 'x': shape (2,) is wrong"


def test_error_result_with_unknown_code() -> None:
    got = decode_result(encode_error("martian", "odd"))
    assert type(got) is errors.ServerError
    assert got.details["code"] == "martian"


def test_encode_exception() -> None:
    got = decode_result(encode_exception(errors.DtypeError("input 't': float64")))
    assert type(got) is errors.DtypeError
    assert got.message == "input 't': float64"
    got = decode_result(encode_exception(RuntimeError("boom")))
    assert type(got) is errors.ServerError
    assert got.message == "RuntimeError: boom"


@pytest.mark.parametrize(
    "blob", [b"", b"not json", b"[1, 2]", b'{"v":1}', b'{"v":1,"kind":"mystery"}']
)
def test_decode_result_rejects_garbage(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_result(blob)


# ---------------------------------------------------------------- property


_wire_dtypes = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes(endianness="?")
    | hnp.unsigned_integer_dtypes(endianness="?")
    | hnp.floating_dtypes(endianness="?")
    | hnp.complex_number_dtypes(endianness="?")
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    arr=hnp.arrays(
        dtype=_wire_dtypes,
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
    ),
    name=st.text(min_size=1, max_size=12),
)
def test_tensor_round_trip_property(arr: np.ndarray, name: str) -> None:
    req = decode_request(encode_request("p", {name: arr}))
    (raw,) = req.inputs
    assert raw.name == name
    _assert_bit_exact(_array(raw), arr)
    got = decode_result(encode_tensors({name: arr}))
    assert isinstance(got, np.ndarray)
    _assert_bit_exact(got, arr)


def test_unknown_protocol_version_is_a_decode_error() -> None:
    fields = {b"uri": b"u", b"zs": b"4", b"image:t": b"\xff\xd8"}
    with pytest.raises(DecodeError, match="protocol version b'4' is not supported"):
        decode_request(fields)


def test_version_3_inbox_and_shm_fields_are_checked() -> None:
    fields = encode_request("u", {"t": np.arange(3, dtype=np.int16)}, reply_to=b"t", inbox=b"c")
    assert fields[b"zs"] == b"3"
    assert decode_request(fields).inputs[0].kind == "tensor"
    with pytest.raises(DecodeError, match="inbox b'a b' is not"):
        decode_request({**fields, b"inbox": b"a b"})
    with pytest.raises(DecodeError, match="without a newline"):
        decode_request({**fields, b"reply_to": b"a\nb"})
    ref = {b"uri": b"u", b"zs": b"3", b"shm:x": b"zs-r:8:12", b"dtype:x": b"<f4", b"shape:x": b"3"}
    (raw,) = decode_request(ref).inputs
    assert (raw.kind, raw.ref) == ("shm", ShmRef("zs-r", 8, 12, "<f4", (3,)))
    for bad in (b"zs-r:8", b"../x:0:4", b"zs-r:-1:4", b"zs-r:0:x"):
        with pytest.raises(DecodeError, match="is not <region>:<offset>:<nbytes>"):
            decode_request({**ref, b"shm:x": bad})
    with pytest.raises(MissingInputError, match="needs 'dtype:x'"):
        decode_request({k: v for k, v in ref.items() if k != b"dtype:x"})
    # shm fields are version 3's: in version 2 a field of that name is the client's own
    with pytest.raises(MissingInputError, match="record has no payload"):
        decode_request({**ref, b"zs": b"2"})


def test_version_2_reads_as_version_1_and_names_an_empty_reply_to() -> None:
    fields = encode_request("u", {"t": np.arange(3, dtype=np.int16)}, reply_to=b"tok")
    assert fields[b"zs"] == b"2"
    (raw,) = decode_request(fields).inputs
    assert (raw.name, raw.dtype, raw.shape) == ("t", "<i2", (3,))
    with pytest.raises(DecodeError, match="reply_to is empty"):
        decode_request({**fields, b"reply_to": b""})
