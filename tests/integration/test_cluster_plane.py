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


def test_predict_from_threads_on_every_plane(
    plane: Any, onnx_model_dir: Path, tmp_path: Path
) -> None:
    """``predict`` from several threads: through the inbox on one stream, through each
    partition's reply keys when the stream is split (an inbox is one key in one slot); every
    answer is ONNX Runtime's own, and nothing is left pending."""
    import threading

    import numpy as np

    from zoo_serving import InputQueue

    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {**plane.data("predict_stream"), "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 0},
        "log": {"dir": str(tmp_path / "work")},
    }
    xs = np.random.default_rng(5).normal(size=(24, 3, 32, 32)).astype(np.float32)
    expected = onnx_direct(onnx_model_dir, xs)
    got: dict[int, Any] = {}
    with Server(raw), InputQueue(config=plane.client_config(), name="predict_stream") as q:
        assert q.partitions == plane.partitions

        def call(part: range) -> None:
            batch = q.predict([xs[i] for i in part], timeout=60)
            got.update(zip(part, batch))

        threads = [threading.Thread(target=call, args=(range(k, k + 6),)) for k in (0, 6, 12)]
        for t in threads:
            t.start()
        got[18] = q.predict(xs[18], timeout=60)
        got.update(zip(range(19, 24), q.predict([xs[i] for i in range(19, 24)], timeout=60)))
        for t in threads:
            t.join()
        assert plane.pending("predict_stream") == 0
    for i in range(24):
        np.testing.assert_allclose(
            np.asarray(got[i]).reshape(-1), expected[i].reshape(-1), atol=1e-5
        )


def test_the_asyncio_client_names_data_src_when_given_many_nodes() -> None:
    import pytest

    from zoo_serving.aio import AsyncInputQueue
    from zoo_serving.errors import ConfigError

    for src in ("redis+cluster://127.0.0.1:1,127.0.0.1:2", "redis+sentinel://127.0.0.1:1/m"):
        with pytest.raises(ConfigError, match="data.src") as caught:
            AsyncInputQueue(config={"data": {"src": src}})
        assert caught.value.details["key"] == "data.src"
