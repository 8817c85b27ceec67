"""OpenVINO models served end to end through a real Redis: an IR the test builds (torch ->
ONNX -> openvino.convert_model -> save_model) and the ONNX file itself run through OpenVINO,
compared with torch and ONNX Runtime for the same input."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import openvino as ov
import pytest
import torch

from conftest import _torch_cnn, build_onnx_cnn, jpeg
from helpers import decoded_image, onnx_direct
from zoo_serving.backends.openvino_ir import OpenVinoModel
from zoo_serving.broker.presence import Presence

SEED = 0
ATOL = 1e-4


def torch_direct(batch: np.ndarray) -> np.ndarray:
    """The CNN of ``build_onnx_cnn`` (same seed) run by torch."""
    torch.manual_seed(SEED)
    module = _torch_cnn(10).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


def inputs(n: int, seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_cnn(tmp_path_factory.mktemp("ov-onnx") / "cnn.onnx", seed=SEED).parent


@pytest.fixture(scope="module")
def ir_dir(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ONNX CNN converted to an IR with f32 weights: cnn.xml + cnn.bin."""
    path = tmp_path_factory.mktemp("ov-ir") / "cnn.xml"
    ov.save_model(ov.convert_model(str(onnx_dir / "cnn.onnx")), str(path), compress_to_fp16=False)
    return path.parent


@pytest.fixture(params=["ir", "onnx"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    """The IR, and the ONNX file run by OpenVINO instead of ONNX Runtime."""
    return request.getfixturevalue(f"{request.param}_dir")


def served_by_openvino(serve: Any, model_dir: Path, **dotted: Any) -> Any:
    # detection serves an IR with OpenVINO; engine_type openvino does so for an .onnx file
    overrides = {"params.engine_type": "openvino", "data.shape": "3,32,32", "params.batch_size": 8}
    return serve(model_dir, **{**overrides, **dotted})


def test_tensor_inputs_match_torch_and_onnxruntime(
    model_dir, onnx_dir, serve, client, redis_client, stream
) -> None:
    server = served_by_openvino(serve, model_dir, **{"params.top_n": 0})
    # OpenVINO runs it, not ONNX Runtime (whose answers would match as well): the worker's
    # model, and what the workers publish of it, say so
    model = server.runner._workers[0].model
    assert isinstance(model, OpenVinoModel) and model.backend == "openvino"
    assert Presence(redis_client, stream).model()["backend"] == "openvino"
    x = inputs(6, seed=1)
    served = np.stack(client.predict(list(x), timeout=30))
    assert served.shape == (6, 10) and served.dtype == np.float32
    np.testing.assert_allclose(served, torch_direct(x), rtol=0, atol=ATOL)
    np.testing.assert_allclose(served, onnx_direct(onnx_dir, x), rtol=0, atol=ATOL)


def test_image_inputs_top_n_match_onnxruntime(ir_dir, onnx_dir, serve, client) -> None:
    served_by_openvino(serve, ir_dir, **{"params.top_n": 3})
    images = [jpeg(seed) for seed in range(5)]
    served = client.predict(images, timeout=30)
    direct = onnx_direct(onnx_dir, np.stack([decoded_image(b) for b in images]))
    for answer, scores in zip(served, direct):
        order = np.argsort(-scores)[:4]
        # the top 4 scores are well apart, so no near-tie can reorder the top 3
        assert np.all(-np.diff(scores[order]) > 10 * ATOL), scores[order]
        assert [i for i, _ in answer] == order[:3].tolist()
        np.testing.assert_allclose([p for _, p in answer], scores[order[:3]], rtol=0, atol=ATOL)


class BatchRecordingModel(OpenVinoModel):
    """The OpenVINO backend, noting the size of every batch it runs."""

    sizes: ClassVar[list[int]] = []

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sizes.append(len(next(iter(batch.values()))))
        return super()._predict(batch)


def test_partial_last_batch(ir_dir, serve, client, output) -> None:
    """11 records waiting before the server starts, batch size 8: 11 is no multiple of 8, so
    at least one batch is partial."""
    x = inputs(11, seed=3)
    uris = [f"ov-{i}" for i in range(11)]
    client.enqueue_many((uri, {"input": r}) for uri, r in zip(uris, x))
    BatchRecordingModel.sizes.clear()
    overrides = {"model.backend": f"{__name__}:BatchRecordingModel", "params.top_n": 0}
    served_by_openvino(serve, ir_dir, **overrides, **{"params.max_wait_ms": 500})
    results = output.query_many(uris, timeout=30)
    assert sorted(results) == sorted(uris)
    served = np.stack([results[u] for u in uris])
    np.testing.assert_allclose(served, torch_direct(x), rtol=0, atol=ATOL)
    warmup, *sizes = BatchRecordingModel.sizes  # the warm-up runs before any record is read
    assert warmup == 8 and sum(sizes) == 11 and max(sizes) <= 8, BatchRecordingModel.sizes
    assert any(size < 8 for size in sizes)


class FixedBatch(torch.nn.Module):
    """Conv then ``reshape(2, -1)``: row i is record i, in batches of exactly 2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(SEED)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Any) -> Any:
        return self.conv(x).reshape(2, -1)


def test_fixed_batch_ir_is_padded_and_split(serve, client, tmp_path) -> None:
    """An IR that only takes batches of 2 serves 5 records: 2 + 2 + 1 padded to 2."""
    module = FixedBatch().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch tracing notes
        model = ov.convert_model(module, example_input=torch.zeros(2, 3, 8, 8), input=[2, 3, 8, 8])
    ov.save_model(model, str(tmp_path / "fixed" / "fixed.xml"), compress_to_fp16=False)
    served_by_openvino(serve, tmp_path / "fixed", **{"data.shape": "3,8,8", "params.top_n": 0})
    x = inputs(5, seed=4, shape=(3, 8, 8))
    served = np.stack(client.predict(list(x), timeout=30))
    padded = np.concatenate([x, np.zeros_like(x[:1])])
    with torch.inference_mode():
        expected = np.concatenate(
            [module(torch.from_numpy(padded[i : i + 2])).numpy() for i in range(0, 6, 2)]
        )[:5]
    np.testing.assert_allclose(served, expected, rtol=0, atol=ATOL)
