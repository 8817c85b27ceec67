"""The fixture BigDL LeNet served end to end through a real Redis, compared with a NumPy forward
pass over the weights read from the file: the served rows are log-probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import assert_top_n
from zoo_serving.backends.bigdl.reader import Module, TensorReader, read_module


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid, stride-1 convolution as an einsum over all kernel windows."""
    k = w.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def _max_pool_2x2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def lenet_forward(model_file: Path, x: np.ndarray) -> np.ndarray:
    """The fixture's LeNet-5 (Reshape, conv-tanh-pool-tanh, conv-pool, Reshape, fc-tanh-fc,
    LogSoftMax) in float64 NumPy over the weights the reader takes from the file."""
    root = read_module(model_file)
    reader = TensorReader(root)
    params = {}
    for sub in root.subModules:
        weight, bias = Module(sub, reader).params()
        if weight is not None and bias is not None:
            params[sub.name] = (weight.astype(np.float64), bias.astype(np.float64))
    (w1, b1), (w2, b2) = params["conv1_5x5"], params["conv2_5x5"]
    (f1, c1), (f2, c2) = params["fc1"], params["fc2"]
    y = x.reshape(len(x), 1, 28, 28).astype(np.float64)
    y = np.tanh(_max_pool_2x2(np.tanh(_conv(y, w1.reshape(6, 1, 5, 5), b1))))
    y = _max_pool_2x2(_conv(y, w2.reshape(12, 6, 5, 5), b2)).reshape(len(x), -1)
    z = np.tanh(y @ f1.T + c1) @ f2.T + c2
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def digits(n: int, seed: int) -> np.ndarray:
    """Digit-like 1x28x28 arrays: a few strokes of ink in [0, 1] on a blank page."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 1, 28, 28), np.float32)
    for k in range(n):
        for _ in range(3):
            r, c = rng.integers(4, 24, 2)
            img[k, 0, r - 3 : r + 3, c - 1 : c + 2] = rng.uniform(0.5, 1.0)
    return img


@pytest.fixture
def lenet_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "bigdl"


def test_lenet_top_n_matches_numpy(lenet_dir: Path, serve, client) -> None:
    serve(lenet_dir, **{"data.shape": "1,28,28", "params.top_n": 3})
    batch = digits(7, seed=1)
    served = client.predict([x for x in batch], timeout=60)
    expected = lenet_forward(lenet_dir / "bigdl_lenet.model", batch)
    for answer, logp in zip(served, expected):
        assert_top_n(answer, logp, 3)  # same classes in order, log-probabilities within 1e-5


def test_lenet_raw_log_probabilities(lenet_dir: Path, serve, client) -> None:
    serve(lenet_dir, **{"data.shape": "1,28,28", "params.top_n": 0})
    batch = np.concatenate([digits(3, seed=2), np.random.default_rng(3).random((2, 1, 28, 28))])
    batch = batch.astype(np.float32)
    served = client.predict([x for x in batch], timeout=60)
    expected = lenet_forward(lenet_dir / "bigdl_lenet.model", batch)
    for answer, logp in zip(served, expected):
        assert answer.dtype == np.float32 and answer.shape == (5,)
        np.testing.assert_allclose(answer, logp, rtol=0, atol=1e-5)
        assert abs(np.exp(answer.astype(np.float64)).sum() - 1) < 1e-5


def test_lenet_flat_records(lenet_dir: Path, serve, client) -> None:
    """data.shape 784: the LeNet's first Reshape takes flat records too."""
    serve(lenet_dir, **{"data.shape": "784", "params.top_n": 5})
    batch = digits(4, seed=5)
    served = client.predict([x.reshape(784) for x in batch], timeout=60)
    expected = lenet_forward(lenet_dir / "bigdl_lenet.model", batch)
    for answer, logp in zip(served, expected):
        assert_top_n(answer, logp, 5)
