"""Decompression bombs: small, well-formed image headers that claim huge sizes.

Each builder returns the bytes of a file of its format whose header says ``width`` x
``height`` pixels and whose image data is a few bytes at most: a decoder that believes the
header allocates for the whole picture before it finds the data missing.
"""

from __future__ import annotations

import struct
import zlib

from conftest import jpeg


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (valid CRCs) whose header claims ``width`` x ``height`` pixels."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54) + info + bytes(64)


def bmp_core_claiming(width: int, height: int) -> bytes:
    """An OS/2 BMP (the 12-byte BITMAPCOREHEADER, 16-bit dims)."""
    info = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 1000, 0, 0, 26) + info + bytes(64)


def _riff(fourcc: bytes, payload: bytes) -> bytes:
    chunk = fourcc + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_lossless_claiming(width: int, height: int) -> bytes:
    """A VP8L (lossless) WebP: signature 0x2F, then 14 bits each of width - 1, height - 1."""
    bits = (width - 1) | ((height - 1) << 14)
    return _riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + bytes(27))


def webp_lossy_claiming(width: int, height: int) -> bytes:
    """A VP8 (lossy) WebP key frame: frame tag, start code 9D 01 2A, 14-bit width, height."""
    tag = (1 << 4) | (10 << 5)  # key frame, version 0, shown, first partition of 10 bytes
    header = tag.to_bytes(3, "little") + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return _riff(b"VP8 ", header + bytes(24))


def webp_canvas_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose canvas is ``width`` x ``height``."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + canvas
    lossless = webp_lossless_claiming(width, height)[12:]
    body = b"WEBP" + vp8x + lossless
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_claiming(width: int, height: int, order: str = "<", big: bool = False) -> bytes:
    """A grey 8-bit TIFF (or BigTIFF) with one strip of 16 bytes, whose first IFD says
    ``width`` x ``height``."""
    mark = b"II" if order == "<" else b"MM"
    entry_fmt, count_fmt, value_size = ("HHQQ", "Q", 8) if big else ("HHII", "H", 4)
    first_ifd = 16 if big else 8
    tags = [  # tag, type (3 SHORT, 4 LONG, 16 LONG8), value
        (256, 16 if big else 4, width),
        (257, 16 if big else 4, height),
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # PhotometricInterpretation: min-is-black
        (273, 4, 0),  # StripOffsets: patched below
        (277, 3, 1),  # SamplesPerPixel
        (278, 16 if big else 4, height),  # RowsPerStrip
        (279, 4, 16),  # StripByteCounts
    ]
    entry_size = struct.calcsize(order + entry_fmt)
    ifd_size = struct.calcsize(order + count_fmt) + len(tags) * entry_size + value_size
    strip = first_ifd + ifd_size
    ifd = struct.pack(order + count_fmt, len(tags))
    for tag, kind, value in tags:
        value = strip if tag == 273 else value
        # a SHORT sits in the first bytes of its value field, whatever the byte order
        slot = struct.pack(order + {3: "H", 4: "I", 16: "Q"}[kind], value).ljust(value_size, b"\0")
        ifd += struct.pack(order + entry_fmt[:3], tag, kind, 1) + slot
    ifd += bytes(value_size)  # no next IFD
    if big:
        head = mark + struct.pack(order + "HHHQ", 43, 8, 0, first_ifd)
    else:
        head = mark + struct.pack(order + "HI", 42, first_ifd)
    return head + ifd + bytes(16)


def jpeg_with_fill_claiming(width: int, height: int, fill: int = 7) -> bytes:
    """A real JPEG whose frame header says ``width`` x ``height``, with ``fill`` fill bytes
    (0xFF, which JPEG allows before any marker) in front of that frame header."""
    data = bytearray(jpeg(0))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data[:sof]) + b"\xff" * fill + bytes(data[sof:])


def pnm_claiming(width: int, height: int) -> bytes:
    return b"P5\n# a comment\n%d %d\n255\n" % (width, height) + bytes(16)
