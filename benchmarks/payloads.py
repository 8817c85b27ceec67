"""What the benchmark clients send, and the same records as the server feeds them to the model.

Two kinds of record, named by ``ClientJob.payload``:

- ``"tensor"``: float32 arrays of the job's shape, standard normal, regenerated from
  ``(seed, index)`` wherever they are needed (client process, raw segments, answer checks);
- ``"jpeg"``: encoded images, :data:`JPEG_COUNT` distinct ones cycled by record index. Each is
  smoothed noise with a photo-like spectrum (six octaves of random grids upscaled bicubically,
  coarse ones strongest; a luminance field plus two weaker colour fields), :data:`JPEG_SIZE`
  pixels at quality 90 (about 14 KB), so the server decodes *and resizes* it to ``data.shape``
  3x224x224.

:class:`ModelFeed` builds a batch the way the worker does: JPEG bytes go through
``zoo_serving.serving.preprocess.Preprocessor`` with the server's settings (the same decode, resize,
layout and dtype), records are stacked with ``np.stack``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import zoo_serving
from zoo_serving.config import load_config
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput, Request

SEED = 1234
IMAGE_SHAPE = "3,224,224"  # data.shape of every benchmark server
INPUT = "input"  # the input name of every benchmark model (conftest.export_onnx)
JPEG_SIZE = (320, 240)  # width x height: not 224x224, so the server resizes
JPEG_COUNT = 48
JPEG_QUALITY = 90
PAYLOADS = ("tensor", "jpeg")


def record_input(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Record ``index`` of a run; the client and the checker regenerate it from the seed."""
    return np.random.default_rng((seed, index)).standard_normal(shape, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def jpeg_images(seed: int, count: int = JPEG_COUNT) -> tuple[bytes, ...]:
    """``count`` distinct natural-looking JPEGs of :data:`JPEG_SIZE`, the same in every
    process for the same seed."""
    import cv2

    width, height = JPEG_SIZE
    out = []
    for k in range(count):
        rng = np.random.default_rng((seed, 7, k))
        # 1/f-ish like a photo: octaves of upscaled noise, coarse ones strongest, in one
        # luminance field plus two weaker, coarser colour fields
        planes = np.zeros((height, width, 3))
        for octave in range(6):
            grid = (3 << octave, 4 << octave)
            noise = rng.standard_normal((*grid, 3)) * np.array([1.0, 0.35, 0.35])
            if octave > 2:
                noise[..., 1:] = 0.0
            up = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
            planes += up * (0.6**octave)
        lum, c1, c2 = (planes[..., i] for i in range(3))
        bgr = np.stack([lum + c1, lum - 0.5 * c1 + c2, lum - 0.5 * c1 - c2], axis=-1)
        img = np.clip(128 + 40 * bgr, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok, "cv2.imencode failed"
        out.append(buf.tobytes())
    return tuple(out)


def client_inputs(payload: str, seed: int, shape: tuple[int, ...], records: int) -> list[Any]:
    """Every record a client sends in a round, by index: arrays or JPEG bytes."""
    if payload == "jpeg":
        images = jpeg_images(seed)
        return [images[i % len(images)] for i in range(records)]
    if payload == "tensor":
        return [record_input(seed, i, shape) for i in range(records)]
    raise ValueError(f"payload: expected one of {PAYLOADS}, got {payload!r}")


class ModelFeed:
    """Records as the worker hands them to the model: decoded like the server, stacked.

    Args:
        model: the loaded model (its first input is fed).
        payload: ``"tensor"`` or ``"jpeg"``.
        shape: a tensor record's shape.
        seed: the run's seed.
    """

    def __init__(
        self, model: zoo_serving.Model, payload: str, shape: tuple[int, ...], seed: int = SEED
    ) -> None:
        self.model = model
        self.payload = payload
        self.shape = shape
        self.seed = seed
        self.name = model.inputs[0].name
        # the worker's Preprocessor, built from the settings a benchmark server gets
        data = load_config({"model": {"path": "-"}, "data": {"shape": IMAGE_SHAPE}}).data
        self.preprocess = Preprocessor(
            model.inputs,
            image_shape=data.shape,
            image_layout=model.image_layout,
            max_payload_bytes=data.max_payload_bytes,
            max_image_pixels=data.max_image_pixels,
        )

    def record(self, index: int) -> np.ndarray:
        """Record ``index`` as the model gets it (for JPEGs: decoded now, as the server does)."""
        if self.payload == "jpeg":
            images = jpeg_images(self.seed)
            raw = RawInput(name=self.name, kind="image", data=images[index % len(images)])
            return self.preprocess(Request(uri=b"raw", inputs=[raw]))[self.name]
        return record_input(self.seed, index, self.shape)

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return {self.name: np.stack([self.record(i) for i in indices])}

    def scores(self, indices: Sequence[int]) -> np.ndarray:
        """The model's own output for these records, in one batch."""
        return self.model.predict(self.batch(indices))[self.model.outputs[0].name]

    def raw_records_per_s(self, batch_size: int, batches: int) -> float:
        """Records/s of ``model.predict`` over ``batches`` batches. Tensors come ready-made
        (four random batches cycled); JPEG batches are decoded inside the timed loop, so the
        figure includes decoding, as serving does."""
        if self.payload == "jpeg":
            count = len(jpeg_images(self.seed))
            for b in range(2):  # warm caches and thread pool, untimed
                self.model.predict(self.batch(range(b * batch_size, (b + 1) * batch_size)))
            start = time.monotonic()
            for b in range(batches):
                first = (b * batch_size) % count
                self.model.predict(self.batch(range(first, first + batch_size)))
            return batches * batch_size / (time.monotonic() - start)
        rng = np.random.default_rng(self.seed)
        ready = [
            {self.name: rng.standard_normal((batch_size, *self.shape), dtype=np.float32)}
            for _ in range(4)
        ]
        for batch in ready[:2]:
            self.model.predict(batch)  # warm caches and thread pool, untimed
        start = time.monotonic()
        for i in range(batches):
            self.model.predict(ready[i % len(ready)])
        return batches * batch_size / (time.monotonic() - start)
