"""A model whose output differs from the shape it describes fails the record with an error
naming the output and both shapes, rather than answering with a tensor of another shape; its
batch-mates are served, and free dimensions fit any size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo_serving import keys
from zoo_serving.errors import InferenceError
from zoo_serving.wire.native import decode_result, encode_request


def _identity_onnx(path: Path, declared: list[Any]) -> Path:
    """``y = x`` for x of shape [N, D], with y declared as ``declared`` (ONNX Runtime returns
    the actual shape whatever the declaration says)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "identity.onnx"))
    return path


def _sentinel_torchscript(path: Path) -> Path:
    """A TorchScript model whose output is [N, 10], except for a batch holding a value over
    1000: then [N, 20]. Its output spec comes from the warm-up (zeros): [?, 10]."""
    import torch

    class Sentinel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.flatten(1)[:, :10]
            if bool((x > 1000).any()):
                return torch.cat([y, y], 1)
            return y

    path.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Sentinel()), str(path / "sentinel.pt"))
    return path


def _send_and_wait(client: Any, stream: str, records: dict[str, np.ndarray]) -> dict[str, Any]:
    for uri, arr in records.items():
        client.db.xadd(stream, encode_request(uri, {"x": arr}))
    results = {}
    for uri in records:
        reply = client.db.blpop([keys.result(stream, uri)], timeout=60)
        assert reply is not None, f"no result for {uri}"
        results[uri] = decode_result(reply[1])
    return results


def test_an_output_unlike_its_static_description_is_an_error(
    serve: Any, client: Any, stream: str, tmp_path: Path
) -> None:
    serve(_identity_onnx(tmp_path / "m", ["N", 4]), **{"params.top_n": 0, "params.max_wait_ms": 50})
    good = np.arange(4, dtype=np.float32)
    results = _send_and_wait(
        client, stream, {"a": good, "wide": np.ones(5, np.float32), "b": good + 1}
    )
    np.testing.assert_array_equal(results["a"], good)
    np.testing.assert_array_equal(results["b"], good + 1)
    error = results["wide"]
    assert isinstance(error, InferenceError), repr(error)
    assert error.code == "inference"
    assert "output 'y' is (5,) per record, but the model describes it as (4,)" in error.message


def test_free_dimensions_fit_any_size(serve: Any, client: Any, stream: str, tmp_path: Path) -> None:
    serve(_identity_onnx(tmp_path / "m", ["N", "D"]), **{"params.top_n": 0})
    results = _send_and_wait(
        client, stream, {"four": np.ones(4, np.float32), "five": np.ones(5, np.float32)}
    )
    assert results["four"].shape == (4,) and results["five"].shape == (5,)


def test_a_torchscript_output_unlike_its_warm_up_is_an_error(
    serve: Any, client: Any, stream: str, tmp_path: Path
) -> None:
    serve(_sentinel_torchscript(tmp_path / "t"), **{"params.top_n": 0, "params.max_wait_ms": 50})
    rng = np.random.default_rng(0)
    plain = rng.normal(size=(3, 32, 32)).astype(np.float32)
    sentinel = plain.copy()
    sentinel[0, 0, 0] = 5000.0
    results = _send_and_wait(client, stream, {"plain": plain, "sentinel": sentinel})
    np.testing.assert_array_equal(results["plain"], plain.reshape(-1)[:10])
    error = results["sentinel"]
    assert isinstance(error, InferenceError), repr(error)
    assert "output 'output' is (20,) per record, but the model describes it as (10,)" in (
        error.message
    )
