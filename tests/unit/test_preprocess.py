"""Wire payloads -> model input arrays: images, tensors, and every way a record can be wrong."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from zoo_serving.backends.base import TensorSpec
from zoo_serving.errors import (
    DecodeError,
    DtypeError,
    InputError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeError,
)
from zoo_serving.serving.preprocess import MAX_DIMS, Preprocessor, image_size
from zoo_serving.wire.native import RawInput, Request

F32 = np.dtype(np.float32)
BGR = (10, 128, 250)  # blue, green, red


def _spec(shape: tuple[int | None, ...], dtype: object = F32, name: str = "x") -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), shape)  # type: ignore[arg-type]


def _picture(h: int, w: int) -> np.ndarray:
    """A BGR uint8 image: a flat colour with a gradient in the blue channel."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BGR
    img[:, :, 0] = (np.arange(w) * 7 % 200)[None, :]
    return img


def _encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _image(data: bytes, name: str = "im") -> RawInput:
    return RawInput(name, "image", data)


def _tensor(arr: np.ndarray, name: str = "x", dtype: str | None = None) -> RawInput:
    arr = np.asarray(arr)
    return RawInput(name, "tensor", arr.tobytes(), dtype or arr.dtype.str, tuple(arr.shape))


# ---------------------------------------------------------------- images


def test_png_decodes_exactly_to_float32_bgr_chw() -> None:
    img = _picture(24, 32)
    pre = Preprocessor([_spec((None, 3, 24, 32))])
    out = pre.decode(_image(_encode(img, ".png")), pre.inputs[0])
    assert out.dtype == np.float32
    assert out.shape == (3, 24, 32)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, img.transpose(2, 0, 1).astype(np.float32))
    # 0-255, no normalisation
    assert out.max() == 250.0


def test_jpeg_decodes_to_bgr_0_255() -> None:
    img = np.empty((40, 48, 3), np.uint8)
    img[:] = BGR
    pre = Preprocessor([_spec((None, 3, 40, 48))])
    out = pre.decode(_image(_encode(img, ".jpg")), pre.inputs[0])
    assert out.dtype == np.float32
    assert out.shape == (3, 40, 48)
    means = out.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means, BGR, atol=4)  # BGR order, not RGB


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_image_is_resized_to_data_shape(ext: str) -> None:
    img = np.empty((60, 80, 3), np.uint8)
    img[:] = BGR
    pre = Preprocessor([_spec((None, 3, None, None))], image_shape=(3, 32, 40))
    out = pre.decode(_image(_encode(img, ext)), pre.inputs[0])
    assert out.shape == (3, 32, 40)
    np.testing.assert_allclose(out.reshape(3, -1).mean(axis=1), BGR, atol=4)


def test_hwc_layout() -> None:
    img = _picture(20, 24)
    pre = Preprocessor([_spec((None, None, None, 3))], image_shape=(3, 20, 24), image_layout="HWC")
    out = pre.decode(_image(_encode(img, ".png")), pre.inputs[0])
    assert out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out, img.astype(np.float32))


@pytest.mark.parametrize(
    ("layout", "spec_shape", "want"),
    [
        ("CHW", (None, 3, 20, 24), (3, 20, 24)),
        ("HWC", (None, 20, 24, 3), (20, 24, 3)),
        ("CHW", (None, 3, 20, None), (3, 20, 64)),  # a free dim takes data.shape's
    ],
)
def test_model_fixed_dims_win_over_data_shape(
    layout: str, spec_shape: tuple[int | None, ...], want: tuple[int, ...]
) -> None:
    pre = Preprocessor([_spec(spec_shape)], image_shape=(3, 48, 64), image_layout=layout)
    out = pre.decode(_image(_encode(_picture(30, 30), ".png")), pre.inputs[0])
    assert out.shape == want


def test_target_image_shape() -> None:
    pre = Preprocessor([], image_shape=(3, 100, 120))
    assert pre.target_image_shape(_spec((None, 3, None, None))) == (3, 100, 120)
    assert pre.target_image_shape(_spec((None, 3, 10, 12))) == (3, 10, 12)


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_grayscale_for_one_channel(layout: str) -> None:
    img = np.empty((16, 16, 3), np.uint8)
    img[:] = BGR
    shape = (None, 1, 16, 16) if layout == "CHW" else (None, 16, 16, 1)
    pre = Preprocessor([_spec(shape)], image_layout=layout)
    out = pre.decode(_image(_encode(img, ".png")), pre.inputs[0])
    assert out.shape == shape[1:]
    gray = float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[0, 0])
    np.testing.assert_allclose(out, gray, atol=2)


def test_image_for_a_non_image_input_is_a_shape_error() -> None:
    pre = Preprocessor([_spec((None, 10))])
    with pytest.raises(ShapeError, match="'im'"):
        pre.decode(_image(_encode(_picture(8, 8), ".png")), pre.inputs[0])


@pytest.mark.parametrize(
    "data",
    [
        b"definitely not an image",
        _encode(_picture(32, 32), ".jpg")[:40],
        _encode(_picture(32, 32), ".png")[:60],
        b"",
    ],
    ids=["garbage", "truncated-jpeg", "truncated-png", "empty"],
)
def test_corrupt_image_is_a_decode_error_naming_the_input(data: bytes) -> None:
    pre = Preprocessor([_spec((None, 3, 8, 8))])
    with pytest.raises(DecodeError) as info:
        pre.decode(_image(data, name="photo"), pre.inputs[0])
    assert "'photo'" in str(info.value)


# ---------------------------------------------------------------- tensors


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint8", "bool", "float16"])
def test_exact_dtype_passes_through_bit_exact(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((2, 3)) * 50).astype(dtype)
    pre = Preprocessor([_spec((None, 2, 3), dtype)])
    out = pre.decode(_tensor(arr), pre.inputs[0])
    assert out.dtype == np.dtype(dtype)
    assert out.shape == (2, 3)
    assert out.tobytes() == arr.tobytes()


def test_big_endian_tensor_values_survive() -> None:
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    pre = Preprocessor([_spec((None, 2, 3))])
    out = pre.decode(_tensor(arr), pre.inputs[0])
    np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_safe_cast_uint8_to_float32() -> None:
    arr = np.array([[0, 1, 255]], np.uint8)
    pre = Preprocessor([_spec((None, 3))])
    out = pre.decode(_tensor(arr[0]), pre.inputs[0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 1.0, 255.0])


def test_unsafe_cast_float64_to_float32_names_both() -> None:
    pre = Preprocessor([_spec((None, 3))])
    with pytest.raises(DtypeError) as info:
        pre.decode(_tensor(np.ones(3, np.float64)), pre.inputs[0])
    assert "float64" in str(info.value)
    assert "float32" in str(info.value)
    assert "'x'" in str(info.value)


@pytest.mark.parametrize("dtype", ["<U4", "|O", "|S4", "not-a-dtype"])
def test_non_numeric_dtype(dtype: str) -> None:
    pre = Preprocessor([_spec((None, 1))])
    raw = RawInput("x", "tensor", b"\0" * 16, dtype, (1,))
    with pytest.raises(DtypeError, match="'x'"):
        pre.decode(raw, pre.inputs[0])


def test_byte_count_mismatch() -> None:
    pre = Preprocessor([_spec((None, 4))])
    raw = RawInput("x", "tensor", b"\0" * 15, "<f4", (4,))
    with pytest.raises(DecodeError) as info:
        pre.decode(raw, pre.inputs[0])
    assert "15" in str(info.value) and "16" in str(info.value)


def test_wrong_shape_names_both_shapes() -> None:
    pre = Preprocessor([_spec((None, 3, 4))])
    with pytest.raises(ShapeError) as info:
        pre.decode(_tensor(np.zeros((4, 3), np.float32)), pre.inputs[0])
    message = str(info.value)
    assert "(4, 3)" in message
    assert "(3, 4)" in message


def test_free_dims_accept_any_size() -> None:
    pre = Preprocessor([_spec((None, None, 4))])
    out = pre.decode(_tensor(np.zeros((7, 4), np.float32)), pre.inputs[0])
    assert out.shape == (7, 4)
    with pytest.raises(ShapeError):
        pre.decode(_tensor(np.zeros((7, 5), np.float32)), pre.inputs[0])


def test_batch_of_one_leading_dim_is_accepted() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    pre = Preprocessor([_spec((None, 3, 4))])
    out = pre.decode(_tensor(arr), pre.inputs[0])
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, arr[0])
    with pytest.raises(ShapeError):
        pre.decode(_tensor(np.zeros((2, 3, 4), np.float32)), pre.inputs[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_a_decode_error(bad: float) -> None:
    arr = np.array([1.0, bad, 3.0], np.float32)
    pre = Preprocessor([_spec((None, 3))])
    with pytest.raises(DecodeError, match="NaN or infinite"):
        pre.decode(_tensor(arr), pre.inputs[0])


def test_payload_over_the_limit() -> None:
    pre = Preprocessor([_spec((None, 64))], max_payload_bytes=100)
    with pytest.raises(PayloadTooLargeError) as info:
        pre.decode(_tensor(np.zeros(64, np.float32)), pre.inputs[0])
    assert "256" in str(info.value) and "100" in str(info.value)
    with pytest.raises(PayloadTooLargeError):
        pre.decode(_image(b"\xff" * 101), _spec((None, 3, 8, 8)))
    # at the limit is fine
    ok = Preprocessor([_spec((None, 25))], max_payload_bytes=100)
    assert ok.decode(_tensor(np.zeros(25, np.float32)), ok.inputs[0]).shape == (25,)


def test_too_many_dims() -> None:
    shape = (1,) * (MAX_DIMS + 1)
    pre = Preprocessor([_spec((None, 1))])
    raw = RawInput("x", "tensor", b"\0" * 4, "<f4", shape)
    with pytest.raises(ShapeError, match=str(MAX_DIMS)):
        pre.decode(raw, pre.inputs[0])


# ---------------------------------------------------------------- matching inputs


def _two_input_pre() -> Preprocessor:
    return Preprocessor([_spec((None, 2), name="a"), _spec((None, 3), name="b")])


def test_inputs_match_by_name() -> None:
    pre = _two_input_pre()
    req = Request(
        b"u",
        [_tensor(np.zeros(3, np.float32), name="b"), _tensor(np.ones(2, np.float32), name="a")],
    )
    out = pre(req)
    assert list(out) == ["b", "a"]
    np.testing.assert_array_equal(out["a"], np.ones(2, np.float32))
    np.testing.assert_array_equal(out["b"], np.zeros(3, np.float32))


def test_inputs_match_by_position() -> None:
    pre = _two_input_pre()
    req = Request(
        b"u",
        [_tensor(np.ones(2, np.float32), name="p"), _tensor(np.zeros(3, np.float32), name="q")],
    )
    out = pre(req)
    assert set(out) == {"a", "b"}
    np.testing.assert_array_equal(out["a"], np.ones(2, np.float32))
    np.testing.assert_array_equal(out["b"], np.zeros(3, np.float32))


def test_single_input_matches_any_name() -> None:
    pre = Preprocessor([_spec((None, 2), name="input.1")])
    out = pre(Request(b"u", [_tensor(np.ones(2, np.float32), name="t")]))
    assert list(out) == ["input.1"]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_wrong_input_count(count: int) -> None:
    pre = _two_input_pre()
    raws = [_tensor(np.ones(2, np.float32), name=f"i{k}") for k in range(count)]
    with pytest.raises(MissingInputError) as info:
        pre(Request(b"u", raws))
    message = str(info.value)
    assert "'a'" in message and "'b'" in message
    assert f"has {count}" in message


def test_every_failure_is_an_input_error() -> None:
    for cls in (DecodeError, DtypeError, ShapeError, MissingInputError, PayloadTooLargeError):
        assert issubclass(cls, InputError)


# ---------------------------------------------------------------- header sizes (bomb guard)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_image_size_reads_the_header_without_decoding(ext: str) -> None:
    ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok
    assert image_size(buf.tobytes()) == (53, 37)


def test_image_size_does_not_believe_a_header_that_does_not_check_out() -> None:
    fake_png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\xff" * 8 + b"\x08\x02\x00\x00\x00"
    assert image_size(fake_png + b"\x00\x00\x00\x00") is None  # wrong CRC
    assert image_size(b"not an image at all") is None


def test_image_header_over_the_pixel_limit_is_refused_before_decoding() -> None:
    ok, buf = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    spec = TensorSpec("x", np.dtype(np.float32), (None, 3, 32, 32))
    pre = Preprocessor([spec], (3, 32, 32), max_image_pixels=1000)
    with pytest.raises(PayloadTooLargeError, match="40x40 pixels is over the limit of 1000"):
        pre.decode(RawInput("x", "image", buf.tobytes()), spec)
