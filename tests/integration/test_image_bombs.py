"""Decompression bombs of every accepted format through a real server: each is answered
``too_large`` from its header, a format whose size cannot be read first is refused, and the
good record beside them is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import bombs
from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import keys
from zoo_serving.errors import ZooServingError
from zoo_serving.wire.native import decode_result

BOMBS = {
    "webp-vp8l": bombs.webp_lossless_claiming(16384, 16384),
    "webp-vp8": bombs.webp_lossy_claiming(16383, 16383),
    "webp-vp8x": bombs.webp_canvas_claiming(2**14, 2**14),
    "tiff": bombs.tiff_claiming(30_000, 30_000),
    "bigtiff": bombs.tiff_claiming(30_000, 30_000, ">", big=True),
    "jpeg-fill": bombs.jpeg_with_fill_claiming(30_000, 30_000),
    "bmp-core": bombs.bmp_core_claiming(65535, 65535),
    "pnm": bombs.pnm_claiming(30_000, 30_000),
    "png": bombs.png_claiming(30_000, 30_000),
}
SUN_RASTER = b"\x59\xa6\x6a\x95" + bytes(28)  # OpenCV decodes it; its size is not read first


def test_bombs_are_too_large_and_their_batch_mates_are_served(
    serve: Any, client: Any, stream: str, onnx_model_dir: Path
) -> None:
    serve(onnx_model_dir, **{"params.batch_size": 16})
    records = {**BOMBS, "sun-raster": SUN_RASTER, "good": jpeg(5)}
    for uri, data in records.items():
        client.db.xadd(stream, {b"uri": uri.encode(), b"zs": b"1", b"image:t": data})
    results = {}
    for uri in records:
        reply = client.db.blpop([keys.result(stream, uri)], timeout=60)
        assert reply is not None, f"no result for {uri}"
        results[uri] = decode_result(reply[1])

    for uri in BOMBS:
        error = results[uri]
        assert isinstance(error, ZooServingError), f"{uri}: {error!r}"
        assert error.code == "too_large", f"{uri}: {error!r}"
        assert "pixels is over the limit of 67108864 (data.max_image_pixels)" in error.message
    refused = results["sun-raster"]
    assert isinstance(refused, ZooServingError) and refused.code == "decode"
    assert "JPEG, PNG, GIF, BMP, TIFF, WebP or PNM" in refused.message
    expected = onnx_direct(onnx_model_dir, np.stack([decoded_image(jpeg(5))]))[0]
    assert_top_n(results["good"], expected, 3)
