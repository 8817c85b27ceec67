"""Many models, one server: each model on its stream, versions, hot swaps, control, budget.

The models are real ONNX graphs (``y = x * factor``), so every answer is checked against what
ONNX Runtime computes for the same input, and says which model and version gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from zoo_serving import InputQueue, Server, keys
from zoo_serving.broker.control import ModelControl
from zoo_serving.errors import VersionUnavailableError
from zoo_serving.wire.native import decode_full


def scale_model(path: Path, factor: float) -> Path:
    """A real ONNX model: ``y = x * factor`` on ``x`` of shape [N, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    k = numpy_helper.from_array(np.full((4,), factor, np.float32), "k")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "s", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def direct(path: Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime itself computes for ``x``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x[None]})[0][0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    scale_model(root / "double" / "1" / "m.onnx", 2.0)
    scale_model(root / "neg" / "1" / "m.onnx", -1.0)
    scale_model(root / "neg" / "2" / "m.onnx", -2.0)
    (root / "neg" / "model.yaml").write_text("versions: all\nbatch_size: 2\n")
    return root


def config(repo: Path, redis_url: str, stream: str, tmp_path: Path, **extra: Any) -> dict:
    raw: dict[str, dict[str, Any]] = {
        "model": {"repository": str(repo)},
        "data": {"src": redis_url, "stream": stream, "shape": "4"},
        "params": {"top_n": 0, "batch_size": 4, "slots": 2, "claim_idle_ms": 2000},
        "repository": {"default": "double"},
        "log": {"dir": str(tmp_path / "work")},
    }
    for key, value in extra.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return raw


def answer(db: Any, stream: str, uri: str, timeout_s: float = 30) -> Any:
    reply = db.blpop([keys.result(stream, uri)], timeout=timeout_s)
    assert reply is not None, f"no result for {uri} on {stream}"
    return decode_full(reply[1])


def test_each_model_serves_its_stream_and_names_model_and_version(
    repo: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path
) -> None:
    x = np.arange(4, dtype=np.float32)
    with Server(config(repo, redis_url, stream, tmp_path)):
        index = ModelControl(redis_client, stream).index()
        assert index["double"]["stream"] == stream  # the default model keeps data.stream
        assert index["neg"]["stream"] == keys.model_stream(stream, "neg")
        with InputQueue(url=redis_url, name=stream) as default:
            np.testing.assert_allclose(default.predict(x), direct(repo / "double/1/m.onnx", x))
        with InputQueue(url=redis_url, name=stream, model="neg") as neg:
            np.testing.assert_allclose(neg.predict(x), direct(repo / "neg/2/m.onnx", x))
            neg.enqueue("n-newest", t=x)
            got = answer(redis_client, index["neg"]["stream"], "n-newest")
            assert (got.model, got.version) == ("neg", 2)
        with InputQueue(url=redis_url, name=stream, model="neg", version=1) as old:
            np.testing.assert_allclose(old.predict(x), direct(repo / "neg/1/m.onnx", x))
            old.enqueue("n-old", t=x)
            got = answer(redis_client, index["neg"]["stream"], "n-old")
            assert (got.model, got.version) == ("neg", 1)
        with InputQueue(url=redis_url, name=stream, model="neg", version=7) as missing:
            with pytest.raises(VersionUnavailableError, match="version 7"):
                missing.predict(x)
        with InputQueue(url=redis_url, name=stream, model="double") as named:
            named.enqueue("d", t=x)
            got = answer(redis_client, stream, "d")
            assert (got.model, got.version) == ("double", 1)
            np.testing.assert_allclose(got.value, direct(repo / "double/1/m.onnx", x))
