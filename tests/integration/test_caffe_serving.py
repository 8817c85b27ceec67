"""Caffe nets served end to end through a real Redis (converted to ONNX, run by ONNX Runtime),
compared with the independent NumPy forward pass of ``tests/unit/test_caffe.py`` over the same
weights: the original project's fixture net and a test-built net with every supported layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import jpeg
from helpers import assert_top_n
from unit.test_caffe import (
    ATOL,
    SMALL,
    SMALL_WEIGHTS,
    build_all_layers_net,
    numpy_forward,
    save_net,
)
from zoo_serving.backends.base import TensorSpec
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput

SIZE = 13  # the all-layers net's input is 3 x SIZE x SIZE


def reference(model_dir: Path, batch: np.ndarray, output: str) -> np.ndarray:
    """The NumPy forward pass's ``output`` blob for ``batch`` (fed to the net's ``data``)."""
    prototxt = next(model_dir.glob("*.prototxt"))
    caffemodel = next(model_dir.glob("*.caffemodel"))
    return numpy_forward(prototxt, caffemodel, {"data": batch})[output]


def decoded(image: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """The image as the server decodes it for a CHW input of ``shape`` (OpenCV BGR, float32)."""
    spec = TensorSpec("data", np.dtype(np.float32), (None, *shape))
    return Preprocessor([spec], shape).decode(RawInput("data", "image", image), spec)


@pytest.fixture(scope="module")
def all_layers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_all_layers_net(tmp_path_factory.mktemp("caffe_all"), seed=7, size=SIZE)[0].parent


@pytest.fixture(scope="module")
def all_layers_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layers with batch statistics for pixel values (0..255)."""
    directory = tmp_path_factory.mktemp("caffe_all_images")
    return build_all_layers_net(directory, seed=8, size=SIZE, scale=128.0)[0].parent


def test_fixture_net_tensors_match_numpy(fixtures_dir, serve, client) -> None:
    model_dir = fixtures_dir / "caffe"
    serve(model_dir, **{"data.shape": "3,5,5", "params.top_n": 0})
    batch = np.random.default_rng(1).normal(0, 1, (6, 3, 5, 5)).astype(np.float32)
    served = client.predict(list(batch), timeout=30)
    want = reference(model_dir, batch, "out")
    for answer, row in zip(served, want):
        assert answer.shape == (2,) and answer.dtype == np.float32
        np.testing.assert_allclose(answer, row, rtol=0, atol=ATOL)


def test_fixture_net_top_n(fixtures_dir, serve, client) -> None:
    model_dir = fixtures_dir / "caffe"
    serve(model_dir, **{"data.shape": "3,5,5", "params.top_n": 2})
    batch = np.random.default_rng(2).normal(0, 1, (4, 3, 5, 5)).astype(np.float32)
    served = client.predict(list(batch), timeout=30)
    for answer, scores in zip(served, reference(model_dir, batch, "out")):
        assert_top_n(answer, scores, 2)


def test_all_layers_net_tensors_match_numpy(all_layers_dir, serve, client) -> None:
    serve(all_layers_dir, **{"data.shape": f"3,{SIZE},{SIZE}"})
    batch = np.random.default_rng(3).normal(0, 1, (7, 3, SIZE, SIZE)).astype(np.float32)
    served = client.predict(list(batch), timeout=30)
    for answer, scores in zip(served, reference(all_layers_dir, batch, "prob")):
        assert_top_n(answer, scores, 3)


def test_all_layers_net_whole_output_tensor(all_layers_dir, serve, client) -> None:
    serve(
        all_layers_dir,
        **{"data.shape": f"3,{SIZE},{SIZE}", "params.top_n": 0},
    )
    x = np.random.default_rng(4).normal(0, 1, (3, SIZE, SIZE)).astype(np.float32)
    served = client.predict(x, timeout=30)
    assert served.shape == (5,)
    np.testing.assert_allclose(served, reference(all_layers_dir, x[None], "prob")[0], atol=ATOL)


def test_all_layers_net_image_inputs(all_layers_image_dir, serve, client) -> None:
    """JPEGs of another size: the server resizes them to the net's 3 x 13 x 13 input."""
    serve(all_layers_image_dir, **{"data.shape": f"3,{SIZE},{SIZE}"})
    images = [jpeg(seed, 30, 26) for seed in range(5)]
    served = client.predict(images, timeout=30)
    batch = np.stack([decoded(image, (3, SIZE, SIZE)) for image in images])
    assert batch.min() >= 0 and batch.max() <= 255
    for answer, scores in zip(served, reference(all_layers_image_dir, batch, "prob")):
        assert_top_n(answer, scores, 3)


def test_net_without_input_declaration_takes_data_shape(tmp_path, serve, client) -> None:
    model_dir = tmp_path / "undeclared"
    save_net(model_dir, SMALL, SMALL_WEIGHTS)
    serve(model_dir, **{"data.shape": "3,6,5", "params.top_n": 0})
    x = np.random.default_rng(5).normal(0, 1, (3, 6, 5)).astype(np.float32)
    served = client.predict(x, timeout=30)
    assert served.shape == (2, 4, 3)
    np.testing.assert_allclose(served, reference(model_dir, x[None], "conv")[0], atol=ATOL)
