"""Wire payloads -> model input arrays: image decode and resize, tensor checks.

Every failure is an :class:`InputError` subclass whose message names the input, what was wrong
(with the value) and what the model expects.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends.base import TensorSpec
from ..errors import (
    DecodeError,
    DtypeError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeError,
)
from ..wire.native import RawInput, Request

MAX_DIMS = 32
# OpenCV refuses to decode images over this many pixels (its own default allows 2**30, a 3 GB
# decode from a few KB of PNG); read by OpenCV when it is first imported.
CV_MAX_IMAGE_PIXELS = 2**26


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, GIF, BMP or JPEG, without decoding it; None
    for other formats or a header that does not parse. Lets a decompression bomb be refused
    before OpenCV allocates for it, whatever OpenCV's own limit is."""
    head = bytes(data[:33])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) == 33 and head[12:16] == b"IHDR":
        if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
            return None  # not a header to believe
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 28:
        info_size, width, height, planes = struct.unpack("<IiiH", head[14:28])
        if info_size not in (40, 52, 56, 108, 124) or planes != 1:
            return None
        return abs(width), abs(height)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk JPEG segments to the first start-of-frame marker, which holds the size."""
    view = memoryview(data)
    i = 2
    while i + 9 <= len(view):
        if view[i] != 0xFF:
            return None
        marker = view[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = int.from_bytes(view[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 10 <= len(view):
            height, width = struct.unpack(">HH", view[i + 5 : i + 9])
            components = view[i + 9]
            if components not in (1, 3, 4) or length != 8 + 3 * components:
                return None  # not a frame header to believe
            return width, height
        i += 2 + length
    return None


def _cv2() -> Any:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(CV_MAX_IMAGE_PIXELS))
    import cv2

    return cv2


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Preprocessor:
    """Turns the raw inputs of one request into arrays keyed by model input name.

    Args:
        inputs: the model's input specs (batch dimension first).
        image_shape: ``data.shape``, C,H,W; used where the model leaves the image size free.
        image_layout: "CHW" or "HWC", what the model takes.
        max_payload_bytes: the largest payload accepted.
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        image_shape: Sequence[int] = (3, 224, 224),
        image_layout: str = "CHW",
        max_payload_bytes: int = 64 * 1024 * 1024,
        max_image_pixels: int = CV_MAX_IMAGE_PIXELS,
    ) -> None:
        self.inputs = list(inputs)
        self.image_shape = tuple(image_shape)
        self.image_layout = image_layout
        self.max_payload_bytes = max_payload_bytes
        self.max_image_pixels = max_image_pixels
        self._by_name = {s.name: s for s in self.inputs}

    def __call__(self, request: Request, *, by_position: bool = False) -> dict[str, np.ndarray]:
        pairs = self.match(request.inputs, by_position=by_position)
        return {spec.name: self.decode(raw, spec) for raw, spec in pairs}

    def match(
        self, raws: Sequence[RawInput], *, by_position: bool = False
    ) -> list[tuple[RawInput, TensorSpec]]:
        """Pair wire inputs with model inputs: by name when every name is the model's (and
        not ``by_position``, as for Analytics Zoo records), otherwise by position."""
        want = ", ".join(repr(s.name) for s in self.inputs)
        if len(raws) != len(self.inputs):
            got = ", ".join(repr(r.name) for r in raws)
            raise MissingInputError(
                f"model takes {len(self.inputs)} input(s) ({want}), record has {len(raws)} ({got})"
            )
        if not by_position and all(r.name in self._by_name for r in raws):
            return [(r, self._by_name[r.name]) for r in raws]
        return list(zip(raws, self.inputs))

    def decode(self, raw: RawInput, spec: TensorSpec) -> np.ndarray:
        """One wire input -> one record's array for ``spec`` (no batch dimension)."""
        if len(raw.data) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"input {raw.name!r}: {len(raw.data)} bytes is over the limit of "
                f"{self.max_payload_bytes} (data.max_payload_bytes)"
            )
        if raw.kind == "image":
            return self.decode_image(raw, spec)
        return self.decode_tensor(raw, spec)

    # ------------------------------------------------------------ images

    def target_image_shape(self, spec: TensorSpec) -> tuple[int, int, int]:
        """(C, H, W) to decode to: the model's own where it fixes them, else ``data.shape``."""
        if len(self.image_shape) != 3:
            raise ShapeError(
                f"data.shape is {self.image_shape}, but images need C,H,W like 3,224,224"
            )
        c, h, w = self.image_shape
        rec = spec.record_shape
        if len(rec) == 3:
            mc, mh, mw = rec if self.image_layout == "CHW" else (rec[2], rec[0], rec[1])
            c, h, w = mc or c, mh or h, mw or w
        return int(c), int(h), int(w)

    def decode_image(self, raw: RawInput, spec: TensorSpec) -> np.ndarray:
        cv2 = _cv2()

        if len(spec.record_shape) != 3:
            raise ShapeError(
                f"input {raw.name!r}: got an image, but the model input {spec.name!r} has shape "
                f"{_shape_text(spec.shape)}, not an image; send a tensor"
            )
        c, h, w = self.target_image_shape(spec)
        if c not in (1, 3):
            raise ShapeError(
                f"input {raw.name!r}: images have 1 or 3 channels, the model wants {c}"
            )
        claimed = image_size(raw.data)
        if claimed is not None and claimed[0] * claimed[1] > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"input {raw.name!r}: image of {claimed[0]}x{claimed[1]} pixels is over the "
                f"limit of {self.max_image_pixels} (data.max_image_pixels)"
            )
        buf = np.frombuffer(raw.data, dtype=np.uint8)
        flag = cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR
        try:
            img = cv2.imdecode(buf, flag) if buf.size else None
        except cv2.error:  # OpenCV 5 raises, rather than returns None, past its pixel limit
            img = None
        if img is None:
            raise DecodeError(
                f"input {raw.name!r}: {len(raw.data)} bytes starting {bytes(raw.data[:8])!r} do "
                "not decode as an image (truncated, corrupt, or over "
                f"{CV_MAX_IMAGE_PIXELS} pixels?); send JPEG, PNG, BMP or TIFF bytes"
            )
        if img.shape[0] * img.shape[1] > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"input {raw.name!r}: image of {img.shape[1]}x{img.shape[0]} pixels is over the "
                f"limit of {self.max_image_pixels} (data.max_image_pixels)"
            )
        if img.shape[0] != h or img.shape[1] != w:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if img.ndim == 2:
            img = img[:, :, None]
        if self.image_layout == "CHW":
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img, dtype=spec.dtype)

    # ------------------------------------------------------------ tensors

    def decode_tensor(self, raw: RawInput, spec: TensorSpec) -> np.ndarray:
        shape = raw.shape or ()
        try:
            dtype = np.dtype(raw.dtype)
        except (TypeError, ValueError):
            raise DtypeError(
                f"input {raw.name!r}: dtype {raw.dtype!r} is not a numpy dtype; "
                f"the model takes {spec.dtype}"
            ) from None
        if dtype.kind not in "biufc":
            raise DtypeError(
                f"input {raw.name!r}: dtype {dtype} is not numeric; the model takes {spec.dtype}"
            )
        if len(shape) > MAX_DIMS:
            raise ShapeError(
                f"input {raw.name!r}: {len(shape)} dims is over the limit of {MAX_DIMS}"
            )
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != len(raw.data):
            raise DecodeError(
                f"input {raw.name!r}: {len(raw.data)} bytes do not hold a {dtype} tensor of shape "
                f"{_shape_text(shape)}, which takes {count * dtype.itemsize} bytes"
            )
        try:
            arr = np.frombuffer(raw.data, dtype=dtype).reshape(shape)
        except ValueError as exc:  # zero-size, but with dims numpy cannot index
            raise ShapeError(
                f"input {raw.name!r}: shape {_shape_text(shape)} is not a valid array shape "
                f"({exc}); the model takes {_shape_text(spec.record_shape)} per record"
            ) from None
        arr = self._fit_shape(raw.name, arr, spec)
        if dtype != spec.dtype:
            if not np.can_cast(dtype, spec.dtype, casting="safe"):
                raise DtypeError(
                    f"input {raw.name!r}: dtype {dtype} cannot be cast safely to the model's "
                    f"{spec.dtype}; send {spec.dtype}"
                )
            arr = arr.astype(spec.dtype)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise DecodeError(
                f"input {raw.name!r}: holds {bad} NaN or infinite value(s); "
                "the model needs finite numbers"
            )
        return arr

    @staticmethod
    def _fit_shape(name: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
        want = spec.record_shape
        if arr.ndim == len(want) + 1 and arr.shape[0] == 1:
            arr = arr[0]  # the client sent a batch of one
        if arr.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, arr.shape)):
            raise ShapeError(
                f"input {name!r}: shape {_shape_text(arr.shape)} does not fit the model input "
                f"{spec.name!r}, which takes {_shape_text(want)} per record"
            )
        return arr
