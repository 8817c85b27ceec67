"""ONNX and TorchScript models served end to end through a real Redis, compared with the
framework's own output for the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import jpeg
from helpers import DIRECT, assert_top_n, decoded_image, onnx_direct


@pytest.fixture(params=["onnx", "torch"])
def model(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"{request.param}_model_dir")


def test_tensor_inputs_match_framework(model, serve, client) -> None:
    backend, model_dir = model
    serve(model_dir)
    rng = np.random.default_rng(1)
    batch = rng.normal(0, 50, (6, 3, 32, 32)).astype(np.float32)
    served = client.predict([x for x in batch], timeout=30)
    direct = DIRECT[backend](model_dir, batch)
    for answer, scores in zip(served, direct):
        assert_top_n(answer, scores, 3)


def test_image_inputs_match_framework(model, serve, client) -> None:
    backend, model_dir = model
    serve(model_dir)
    images = [jpeg(seed) for seed in range(5)]
    served = client.predict(images, timeout=30)
    direct = DIRECT[backend](model_dir, np.stack([decoded_image(b) for b in images]))
    for answer, scores in zip(served, direct):
        assert_top_n(answer, scores, 3)


def test_image_from_path_and_fixture_jpeg(onnx_model_dir, serve, client, fixtures_dir) -> None:
    serve(onnx_model_dir, **{"params.top_n": 5})
    path = fixtures_dir / "images" / "cat1.jpeg"
    served = client.predict(str(path), timeout=30)
    direct = onnx_direct(onnx_model_dir, decoded_image(path.read_bytes())[None])[0]
    assert_top_n(served, direct, 5)


def test_top_n_zero_returns_output_tensor(model, serve, client) -> None:
    backend, model_dir = model
    serve(model_dir, **{"params.top_n": 0})
    x = np.random.default_rng(2).normal(0, 50, (3, 32, 32)).astype(np.float32)
    served = client.predict(x, timeout=30)
    direct = DIRECT[backend](model_dir, x[None])[0]
    assert served.dtype == direct.dtype and served.shape == direct.shape
    np.testing.assert_allclose(served, direct, rtol=0, atol=1e-5)


def test_records_sent_before_the_server_starts_are_served(onnx_model_dir, serve, client, output):
    xs = np.random.default_rng(3).normal(0, 50, (5, 3, 32, 32)).astype(np.float32)
    client.enqueue_many((f"early-{i}", {"t": x}) for i, x in enumerate(xs))
    serve(onnx_model_dir)
    results = output.query_many([f"early-{i}" for i in range(5)], timeout=30)
    direct = onnx_direct(onnx_model_dir, xs)
    assert sorted(results) == [f"early-{i}" for i in range(5)]
    for i, scores in enumerate(direct):
        assert_top_n(results[f"early-{i}"], scores, 3)


def build_batch_size_model(path: Path) -> Path:
    """A TorchScript model whose answer for each record is the size of the batch it ran in."""
    import torch

    class BatchSize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1), float(x.shape[0])) + 0.0 * x.sum()

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(BatchSize()), str(path))
    return path.parent


def test_records_waiting_are_run_in_full_batches(serve, client, output, tmp_path) -> None:
    """64 records queued before the server starts, batch size 8: the model sees them eight
    at a time (each record's answer is its batch's size), not one by one."""
    model_dir = build_batch_size_model(tmp_path / "batch" / "size.pt")
    x = np.zeros((3, 32, 32), np.float32)
    uris = [f"b{i}" for i in range(64)]
    client.enqueue_many((uri, {"input": x}) for uri in uris)
    server = serve(model_dir, **{"params.batch_size": 8, "params.top_n": 0})
    results = output.query_many(uris, timeout=30)
    sizes = [float(results[uri][0]) for uri in uris]
    assert sizes == [8.0] * 64, sizes
    assert server.runner.stats[0].batches == 8
