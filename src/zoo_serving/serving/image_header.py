"""The size of an encoded image, read from its header before anything is decoded.

``data.max_image_pixels`` is enforced here, for every format the server accepts, so a few KB
of image cannot make a worker allocate gigabytes, whatever limit OpenCV itself applies (it
reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when cv2 is first imported, so its own limit
depends on who imported it first).

A format is accepted only when its size can be read here: OpenCV decodes more (JPEG 2000,
AVIF, Radiance HDR, Sun raster, PFM, PAM, ...), but those are refused. Each reader follows
the decoder OpenCV picks for the same bytes, so the size read is the size decoded:

- JPEG (``FF D8 FF``, OpenCV's signature): markers are found as libjpeg finds them, skipping
  fill bytes (``FF FF ...``), stuffed ``FF 00`` and stray bytes between segments; the first
  start-of-frame gives the size.
- PNG: the ``IHDR`` chunk, which must come first, with a good CRC (libpng refuses a bad one).
- GIF: the logical screen (OpenCV refuses frames outside it).
- BMP: the info header (``BITMAPCOREHEADER`` or any of 36 bytes or more), as OpenCV reads it.
- TIFF and BigTIFF: ``ImageWidth`` and ``ImageLength`` of the first IFD (the page OpenCV
  decodes).
- WebP: the ``VP8 `` frame header, the ``VP8L`` header, or the ``VP8X`` canvas (what libwebp's
  ``WebPGetFeatures`` reports and OpenCV allocates).
- PNM (``P1`` to ``P6``): the width and height after the magic number, comments skipped.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

ACCEPTED_FORMATS = "JPEG, PNG, GIF, BMP, TIFF, WebP or PNM (P1-P6)"

_JPEG_MARKER = re.compile(rb"\xff[^\xff\x00]")  # the last fill byte and the marker code
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: nothing follows
# markers libjpeg reads past before the frame (DHT, DAC, DQT, DNL, DRI, APPn, COM); any other
# is an error to libjpeg
_JPEG_SKIPPED = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE}) | frozenset(range(0xE0, 0xF0))
_JPEG_MAX_SEGMENTS = 1024  # real files have a few dozen before the frame; each costs a step here
_PNM_MAGIC = re.compile(rb"P[1-6][ \t\n\v\f\r]")  # OpenCV's signature
_PNM_GAP = re.compile(rb"(?:[ \t\n\v\f\r]+|#[^\n\r]*[\n\r])*")  # whitespace and comments
_PNM_NUMBER = re.compile(rb"[0-9]{1,10}(?![0-9])")
_TIFF_MAX_ENTRIES = 4096  # libtiff refuses an IFD of more entries
_TIFF_INT = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8 (BigTIFF)
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257


class HeaderError(ValueError):
    """The bytes are not an accepted image format, or its header does not give a size."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: its format and its size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """The format and size of an encoded image, from its header alone.

    Raises:
        HeaderError: not an accepted format (its size could not be checked before decoding),
            or a header that does not parse; the message says which.
    """
    blob = data if isinstance(data, bytes) else bytes(data)
    found = next(((fmt, read) for fmt, signature, read in _READERS if signature(blob)), None)
    if found is None:
        raise HeaderError("not an image format whose size can be checked before decoding")
    fmt, read = found
    width, height = read(blob)
    if width <= 0 or height <= 0:
        raise HeaderError(f"a {fmt} whose header gives a size of {width}x{height}")
    return ImageHeader(fmt, width, height)


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) from the header of an accepted format, or None."""
    try:
        header = read_header(data)
    except HeaderError:
        return None
    return header.width, header.height


def _unpack(fmt: str, data: bytes, at: int) -> tuple[int, ...]:
    if at + struct.calcsize(fmt) > len(data):
        raise HeaderError(f"a header cut short at {len(data)} bytes")
    return struct.unpack_from(fmt, data, at)


def _jpeg(data: bytes) -> tuple[int, int]:
    i = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        found = _JPEG_MARKER.search(data, i)
        if found is None:
            raise HeaderError("a JPEG that ends before its frame header (SOF)")
        marker, i = data[found.start() + 1], found.end()
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker not in _JPEG_SKIPPED and marker not in _JPEG_SOF:
            raise HeaderError(f"a JPEG with marker 0x{marker:02X} before its frame header (SOF)")
        (length,) = _unpack(">H", data, i)
        if length < 2:
            raise HeaderError(f"a JPEG segment of length {length}")
        if marker in _JPEG_SOF:
            height, width, components = _unpack(">HHB", data, i + 3)
            if length != 8 + 3 * components:
                raise HeaderError(
                    f"a JPEG frame header of length {length} for {components} components"
                )
            return width, height
        i += length
    raise HeaderError(f"a JPEG of over {_JPEG_MAX_SEGMENTS} segments before its frame header")


def _png(data: bytes) -> tuple[int, int]:
    # OpenCV wants IHDR first, 13 bytes long; libpng refuses it with a bad CRC
    if data[8:16] != b"\x00\x00\x00\x0dIHDR" or len(data) < 33:
        raise HeaderError("a PNG that does not start with an IHDR chunk")
    if zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise HeaderError("a PNG whose IHDR chunk fails its CRC")
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _gif(data: bytes) -> tuple[int, int]:
    width, height = _unpack("<HH", data, 6)
    return width, height


def _bmp(data: bytes) -> tuple[int, int]:
    (info_size,) = _unpack("<i", data, 14)
    if info_size >= 36:
        width, height = _unpack("<ii", data, 18)
    elif info_size == 12:  # BITMAPCOREHEADER: 16-bit dims
        width, height = _unpack("<HH", data, 18)
    else:
        raise HeaderError(f"a BMP info header of {info_size} bytes")
    if height == -(2**31):  # OpenCV's abs() would keep it negative
        raise HeaderError("a BMP of height -2**31")
    return width, abs(height)


def _tiff(data: bytes) -> tuple[int, int]:
    order = "<" if data[:1] == b"I" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        if _unpack(order + "HH", data, 4) != (8, 0):
            raise HeaderError("a BigTIFF header with an offset size other than 8")
        (ifd,) = _unpack(order + "Q", data, 8)
        count_fmt, entry = order + "Q", struct.Struct(order + "HHQ")
    else:
        (ifd,) = _unpack(order + "I", data, 4)
        count_fmt, entry = order + "H", struct.Struct(order + "HHI")
    (count,) = _unpack(count_fmt, data, ifd)
    first = ifd + struct.calcsize(count_fmt)
    step = entry.size + (8 if big else 4)  # tag, type, count, then the value or its offset
    if count > _TIFF_MAX_ENTRIES or first + count * step > len(data):
        raise HeaderError(f"a TIFF whose first IFD of {count} entries does not fit")
    found: dict[int, set[int]] = {_TIFF_WIDTH: set(), _TIFF_LENGTH: set()}
    for at in range(first, first + count * step, step):
        tag, kind, n = entry.unpack_from(data, at)
        if tag not in found:
            continue
        code = _TIFF_INT.get(kind)
        if code is None or n != 1 or (code == "Q" and not big):
            raise HeaderError(f"a TIFF with tag {tag} of type {kind} and count {n}")
        found[tag].add(struct.unpack_from(order + code, data, at + entry.size)[0])
    width, length = found[_TIFF_WIDTH], found[_TIFF_LENGTH]
    if len(width) != 1 or len(length) != 1:
        raise HeaderError(
            f"a TIFF whose first IFD gives ImageWidth {sorted(width)} and ImageLength "
            f"{sorted(length)}, not one of each"
        )
    return width.pop(), length.pop()


def _webp(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if len(data) < 30:
        raise HeaderError(f"a header cut short at {len(data)} bytes")
    if chunk == b"VP8 ":  # a key frame: start code 9D 01 2A, then 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("a WebP whose VP8 frame has no start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # signature 0x2F, then 14 bits of width - 1 and of height - 1
        if data[20] != 0x2F:
            raise HeaderError("a WebP whose VP8L stream has no signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # the canvas: 24 bits of width - 1 and of height - 1
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise HeaderError(f"a WebP whose first chunk is {chunk!r}, not VP8, VP8L or VP8X")


def _pnm(data: bytes) -> tuple[int, int]:
    at = 2
    dims = []
    for _ in range(2):
        gap = _PNM_GAP.match(data, at, min(len(data), at + 4096))
        number = _PNM_NUMBER.match(data, gap.end() if gap else at)
        if number is None:
            raise HeaderError("a PNM header without a width and a height (of 10 digits or less)")
        dims.append(int(number.group()))
        at = number.end()
    return dims[0], dims[1]


_READERS: list[tuple[str, Callable[[bytes], bool], Callable[[bytes], tuple[int, int]]]] = [
    ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff"), _jpeg),
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("BMP", lambda b: b.startswith(b"BM"), _bmp),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("WebP", lambda b: b.startswith(b"RIFF") and b[8:12] == b"WEBP", _webp),
    ("PNM", lambda b: _PNM_MAGIC.match(b) is not None, _pnm),
]
