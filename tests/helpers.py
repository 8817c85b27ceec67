"""Helpers the tests share: the frameworks' own answers, and how to compare with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from zoo_serving.backends.base import TensorSpec
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput

SRC = Path(__file__).resolve().parents[1] / "src"


def cli_env() -> dict[str, str]:
    """The environment of a ``zoo-serve`` child: this checkout's package first on the path,
    whatever PYTHONPATH the test set (a relative one, or a plug-in directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def zoo_serve(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``zoo-serve ARGS`` in ``cwd`` as a user would; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "zoo_serving", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )


def plain_config(where: Path, model: dict, data: dict, **sections: dict) -> Path:
    """``where/config.yaml`` written directly (one process less than `zoo-serve init`)."""
    import yaml

    raw = {"model": model, "data": {"shape": "3,32,32", **data}, **sections}
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.yaml").write_text(yaml.safe_dump(raw))
    return where / "config.yaml"


def wait_for(check: object, timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``check()`` every 50 ms until it is true; fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def status_of(where: Path) -> tuple[int, dict]:
    """``zoo-serve status --json`` in ``where``: exit code and the parsed answer."""
    import json

    result = zoo_serve("status", "--json", cwd=where)
    return result.returncode, json.loads(result.stdout)


PLUGIN_BACKENDS = '''
import os
import time
from pathlib import Path

from zoo_serving.backends.onnx_runtime import OnnxModel


def _wait_for_gate():
    deadline = time.monotonic() + 60
    while not Path(os.environ["ZS_TEST_GATE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class GatedOnnx(OnnxModel):
    """An ONNX model whose load waits for a file: holds a server in its not-ready window."""

    def _load(self):
        _wait_for_gate()
        super()._load()


class SlowOnnx(OnnxModel):
    """An ONNX model whose batches holding a 7 wait for the file: holds a server mid-drain."""

    def _predict(self, batch):
        if any((x == 7).any() for x in batch.values()):
            _wait_for_gate()
        return super()._predict(batch)
'''


def plugin_backends(where: Path, monkeypatch: object) -> Path:
    """Backends ``gated_backend:GatedOnnx`` and ``gated_backend:SlowOnnx`` importable by
    ``zoo-serve`` children, both waiting for the file ``where/gate`` (returned); and
    ``crash_backend``, whose import ends the process with code 7 and not a word."""
    (where / "plugins").mkdir(parents=True, exist_ok=True)
    (where / "plugins" / "gated_backend.py").write_text(PLUGIN_BACKENDS)
    (where / "plugins" / "crash_backend.py").write_text("import os\n\nos._exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", str(where / "plugins"))  # type: ignore[attr-defined]
    monkeypatch.setenv("ZS_TEST_GATE", str(where / "gate"))  # type: ignore[attr-defined]
    return where / "gate"


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
