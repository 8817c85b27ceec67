"""Wire payloads -> model input arrays: image decode and resize, tensor checks.

Every failure is an :class:`InputError` subclass whose message names the input, what was wrong
(with the value) and what the model expects.
"""

from __future__ import annotations

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
from .image_header import ACCEPTED_FORMATS, HeaderError, read_header
from .image_header import image_size as image_size  # re-exported: the old home

MAX_DIMS = 32
DEFAULT_MAX_IMAGE_PIXELS = 2**26  # data.max_image_pixels's default


def _cv2() -> Any:
    # OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS) is left alone: it is read once, when
    # cv2 is first imported by whoever comes first, so it cannot carry data.max_image_pixels;
    # read_header enforces that before any decode
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
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
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
        head = f"input {raw.name!r}: {len(raw.data)} bytes starting {bytes(raw.data[:8])!r}"
        try:
            header = read_header(raw.data)
        except HeaderError as exc:
            raise DecodeError(
                f"{head} do not decode as an image: {exc}; send {ACCEPTED_FORMATS}"
            ) from None
        self._check_pixels(raw.name, header.format, header.width, header.height)
        flag = cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR
        try:
            img = cv2.imdecode(np.frombuffer(raw.data, dtype=np.uint8), flag)
        except cv2.error:  # OpenCV 5 raises, rather than returns None, past its own limits
            img = None
        if img is None:
            raise DecodeError(
                f"{head} do not decode as an image: a {header.format} of {header.width}x"
                f"{header.height} pixels that OpenCV could not decode (truncated or corrupt, or "
                "over OpenCV's own OPENCV_IO_MAX_IMAGE_PIXELS)"
            )
        self._check_pixels(raw.name, header.format, img.shape[1], img.shape[0])
        if img.shape[0] != h or img.shape[1] != w:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if img.ndim == 2:
            img = img[:, :, None]
        if self.image_layout == "CHW":
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img, dtype=spec.dtype)

    def _check_pixels(self, name: str, fmt: str, width: int, height: int) -> None:
        if width * height > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"input {name!r}: {fmt} image of {width}x{height} pixels is over the limit of "
                f"{self.max_image_pixels} (data.max_image_pixels)"
            )

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
