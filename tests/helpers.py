"""Helpers the tests share: the frameworks' own answers, and how to compare with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo_serving.backends.base import TensorSpec
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput


def wait_for(check: object, timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``check()`` every 50 ms until it is true; fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def onnx_direct(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(next(model_dir.glob("*.onnx"))), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"input": batch})[0]


def torch_direct(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(next(model_dir.glob("*.pt")))).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


DIRECT = {"onnx": onnx_direct, "torch": torch_direct}


def decoded_image(data: bytes) -> np.ndarray:
    """The image as the server decodes it (OpenCV, BGR, float32, CHW 3x32x32)."""
    spec = TensorSpec("input", np.dtype(np.float32), (None, 3, 32, 32))
    return Preprocessor([spec], (3, 32, 32)).decode(RawInput("input", "image", data), spec)


def assert_top_n(served: list, scores: np.ndarray, n: int) -> None:
    order = np.argsort(-scores, kind="stable")[:n]
    assert [i for i, _ in served] == order.tolist()
    np.testing.assert_allclose([p for _, p in served], scores[order], rtol=0, atol=1e-5)
