"""Image sizes read from headers before decoding: every accepted format, real bombs of each,
the formats refused because their size cannot be read first, and a limit that holds whoever
imported cv2 first."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

import bombs
from conftest import ROOT, env_without_coverage, jpeg
from zoo_serving.backends.base import TensorSpec
from zoo_serving.errors import DecodeError, PayloadTooLargeError
from zoo_serving.serving.image_header import ACCEPTED_FORMATS, HeaderError, read_header
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput

SPEC = TensorSpec("x", np.dtype(np.float32), (None, 3, 8, 8))


def _decode(data: bytes, max_image_pixels: int = 2**26) -> np.ndarray:
    pre = Preprocessor([SPEC], (3, 8, 8), max_image_pixels=max_image_pixels)
    return pre.decode(RawInput("x", "image", data), SPEC)


def _encoded(ext: str, params: tuple[int, ...] = ()) -> tuple[bytes, tuple[int, int]]:
    img = np.random.default_rng(7).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    if ext in (".pgm", ".pbm"):
        img = img[:, :, 0]
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes(), (53, 37)


# ---------------------------------------------------------------- accepted formats


@pytest.mark.parametrize(
    ("ext", "params", "fmt"),
    [
        (".jpg", (), "JPEG"),
        (".png", (), "PNG"),
        (".gif", (), "GIF"),
        (".bmp", (), "BMP"),
        (".tif", (), "TIFF"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "WebP"),  # lossy: VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),  # lossless: VP8L
        (".ppm", (), "PNM"),
        (".pgm", (), "PNM"),
        (".pbm", (), "PNM"),
    ],
    ids=["jpeg", "png", "gif", "bmp", "tiff", "webp-vp8", "webp-vp8l", "ppm", "pgm", "pbm"],
)
def test_the_header_size_of_every_accepted_format_is_the_decoded_size(
    ext: str, params: tuple[int, ...], fmt: str
) -> None:
    data, (width, height) = _encoded(ext, params)
    header = read_header(data)
    assert (header.format, header.width, header.height) == (fmt, width, height)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (height, width)
    assert _decode(data).shape == (3, 8, 8)


def test_a_jpeg_with_fill_bytes_and_stray_bytes_before_its_markers() -> None:
    # JPEG allows any number of 0xFF before a marker; libjpeg also skips stray bytes and
    # stuffed FF 00 between segments (with a warning) and decodes the picture
    fill = bombs.jpeg_with_fill_claiming(51, 47, fill=9)
    plain = bombs.jpeg_with_fill_claiming(51, 47, fill=0)
    sof = plain.find(b"\xff\xc0")
    stray = plain[:sof] + b"\x12\x34\xff\x00\x56" + plain[sof:]
    for sample in (fill, stray):
        assert (read_header(sample).width, read_header(sample).height) == (51, 47)
        assert cv2.imdecode(np.frombuffer(sample, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (47, 51)
    with pytest.raises(HeaderError, match="marker 0x12"):  # libjpeg: unknown marker, an error
        read_header(fill[: fill.find(b"\xff\xc0")] + b"\x12" + fill[fill.find(b"\xff\xc0") :])


# ---------------------------------------------------------------- bombs

BOMBS: dict[str, tuple[Callable[[int, int], bytes], str]] = {
    "png": (bombs.png_claiming, "PNG"),
    "gif": (bombs.gif_claiming, "GIF"),
    "bmp": (bombs.bmp_claiming, "BMP"),
    "bmp-core": (bombs.bmp_core_claiming, "BMP"),
    "webp-vp8l": (bombs.webp_lossless_claiming, "WebP"),
    "webp-vp8": (bombs.webp_lossy_claiming, "WebP"),
    "webp-vp8x": (bombs.webp_canvas_claiming, "WebP"),
    "tiff-ii": (bombs.tiff_claiming, "TIFF"),
    "tiff-mm": (lambda w, h: bombs.tiff_claiming(w, h, ">"), "TIFF"),
    "bigtiff-ii": (lambda w, h: bombs.tiff_claiming(w, h, "<", big=True), "TIFF"),
    "bigtiff-mm": (lambda w, h: bombs.tiff_claiming(w, h, ">", big=True), "TIFF"),
    "jpeg-fill": (bombs.jpeg_with_fill_claiming, "JPEG"),
    "pnm": (bombs.pnm_claiming, "PNM"),
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_bomb_over_the_limit_is_too_large_before_it_is_decoded(kind: str) -> None:
    build, fmt = BOMBS[kind]
    data = build(3001, 2999)  # nine million pixels from a few dozen bytes
    assert len(data) < 2000
    assert read_header(data).pixels == 3001 * 2999
    with pytest.raises(PayloadTooLargeError) as info:
        _decode(data, max_image_pixels=1_000_000)
    assert info.value.code == "too_large"
    assert f"{fmt} image of 3001x2999 pixels is over the limit of 1000000" in info.value.message
    assert "data.max_image_pixels" in info.value.message


@pytest.mark.parametrize(
    ("kind", "width", "height"),
    [
        ("webp-vp8l", 16384, 16384),
        ("webp-vp8", 16383, 16383),
        ("webp-vp8x", 2**24, 256),
        ("tiff-ii", 100_000, 100_000),
        ("bigtiff-mm", 2**33, 2**33),
        ("bmp-core", 65535, 65535),
        ("jpeg-fill", 65500, 65500),
        ("pnm", 10**6, 10**6),
    ],
)
def test_absurd_sizes_are_refused_at_the_default_limit(kind: str, width: int, height: int) -> None:
    with pytest.raises(PayloadTooLargeError, match=f"image of {width}x{height} pixels"):
        _decode(BOMBS[kind][0](width, height))


def test_the_limit_is_the_configured_value_exactly() -> None:
    data, (width, height) = _encoded(".webp", (cv2.IMWRITE_WEBP_QUALITY, 101))
    assert _decode(data, max_image_pixels=width * height).shape == (3, 8, 8)
    with pytest.raises(PayloadTooLargeError):
        _decode(data, max_image_pixels=width * height - 1)


# ---------------------------------------------------------------- refused


@pytest.mark.parametrize("ext", [".jp2", ".ras", ".hdr", ".pfm", ".pam", ".avif"])
def test_formats_whose_size_is_not_read_first_are_refused(ext: str) -> None:
    img = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    try:
        ok, buf = cv2.imencode(ext, img.astype(np.float32) if ext in (".hdr", ".pfm") else img)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV cannot write {ext}")
    with pytest.raises(DecodeError) as info:
        _decode(buf.tobytes())
    assert "not an image format whose size can be checked before decoding" in str(info.value)
    assert ACCEPTED_FORMATS in str(info.value)


def _tiff_with_two_widths() -> bytes:
    data = bytearray(bombs.tiff_claiming(40, 30))
    struct.pack_into("<H", data, 10 + 12 * 2, 256)  # BitsPerSample -> a second ImageWidth
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (jpeg(1)[:100], "ends before its frame header"),
        (b"\xff\xd8\xff\xda\x00\x02", "marker 0xDA before its frame header"),
        (b"\xff\xd8" + b"\xff\xfe\x00\x02" * 2000, "over 1024 segments"),
        (bombs.png_claiming(40, 30)[:30], "does not start with an IHDR"),
        (bombs.png_claiming(40, 30)[:29] + b"\x00\x00\x00\x00", "fails its CRC"),
        (b"BM" + bytes(12) + struct.pack("<i", 20) + bytes(40), "info header of 20 bytes"),
        (bombs.tiff_claiming(40, 30)[:40], "does not fit"),
        (b"II*\x00" + struct.pack("<I", 10**6), "header cut short"),
        (_tiff_with_two_widths(), r"ImageWidth \[8, 40\]"),
        (b"RIFF\x00\x00\x00\x00WEBPALPH" + bytes(20), "first chunk is b'ALPH'"),
        (b"P6\n#no end", "without a width and a height"),
        (bombs.gif_claiming(0, 30), "size of 0x30"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(40), "not an image format"),
        (b"", "not an image format"),
    ],
    ids=[
        "jpeg-cut",
        "jpeg-sos-first",
        "jpeg-endless-segments",
        "png-cut",
        "png-crc",
        "bmp-info",
        "tiff-ifd-cut",
        "tiff-ifd-past-end",
        "tiff-two-widths",
        "webp-chunk",
        "pnm-no-size",
        "gif-empty",
        "jpeg2000",
        "empty",
    ],
)
def test_headers_that_do_not_give_a_size_are_refused_not_decoded(data: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        read_header(data)
    with pytest.raises(DecodeError, match="do not decode as an image"):
        _decode(data)


# ---------------------------------------------------------------- import order


def test_the_limit_holds_whatever_its_value_and_whoever_imported_cv2_first(
    tmp_path: Path,
) -> None:
    # zoo_serving imports cv2 first here; it once set OpenCV's own limit to 2**26 pixels then,
    # which overrode a larger data.max_image_pixels
    big = tmp_path / "big.png"
    ok, buf = cv2.imencode(".png", np.zeros((8200, 8200), np.uint8))  # 67,240,000 > 2**26
    assert ok
    big.write_bytes(buf.tobytes())
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from zoo_serving.backends.base import TensorSpec
        from zoo_serving.errors import PayloadTooLargeError
        from zoo_serving.serving.preprocess import Preprocessor
        from zoo_serving.wire.native import RawInput

        assert "cv2" not in sys.modules
        spec = TensorSpec("x", np.dtype(np.float32), (None, 1, 8, 8))
        raw = RawInput("x", "image", open({str(big)!r}, "rb").read())
        print(Preprocessor([spec], max_image_pixels=2**27).decode(raw, spec).shape)
        try:
            Preprocessor([spec], max_image_pixels=2**26).decode(raw, spec)
        except PayloadTooLargeError as exc:
            print(exc.code)
        """
    )
    env = env_without_coverage()
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "8,", "8)", "too_large"]
