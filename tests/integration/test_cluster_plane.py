"""Old clients on every data plane: on a Redis Cluster their result keys (no hash tag) are in
another slot than the stream, and are written before the entry is acknowledged."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving import Server


def test_seed_era_clients_are_answered_on_every_plane(
    plane: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**plane.data("image_stream"), "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 3},
        "log": {"dir": str(tmp_path / "work")},
    }
    db = plane.db
    image = jpeg(21, 32, 32)
    with Server(raw):
        # the seed's client adds to the stream by name: partition 0, whatever data.partitions
        db.xadd("image_stream", {"uri": "cat", "image": base64.b64encode(image)})
        db.xadd("image_stream", {"uri": "broken", "image": base64.b64encode(b"no jpeg")})
        deadline = time.monotonic() + 30
        while not (db.exists("result:cat") and db.exists("result:broken")):
            assert time.monotonic() < deadline, "no seed-era results"
            time.sleep(0.01)
        while plane.queued("image_stream") or plane.pending("image_stream"):
            assert time.monotonic() < deadline, "answered but not acknowledged"
            time.sleep(0.01)
    value = json.loads(db.hget("result:cat", "value"))
    assert_top_n(value, onnx_direct(onnx_model_dir, decoded_image(image)[None])[0], 3)
    assert db.hget("result:broken", "value") == b"NaN"
    assert 0 < db.pttl("result:cat") <= 3600 * 1000
