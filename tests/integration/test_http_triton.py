"""Triton's own HTTP client (tritonclient) against the front door: health, metadata, and
inference with JSON tensors and with Triton's binary tensor extension, every answer equal to
ONNX Runtime's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import onnx_direct
from zoo_serving.broker.embedded import free_port

NAME = "cnn"


def _xs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def triton(serve: Callable[..., Any], onnx_model_dir: Path) -> Callable[..., Any]:
    clients: list[Any] = []

    def start(**dotted: Any) -> Any:
        config = {"http.port": free_port(), "http.model_name": NAME, **dotted}
        server = serve(onnx_model_dir, **config)
        client = httpclient.InferenceServerClient(url=server.http.url.removeprefix("http://"))
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


def _input(x: np.ndarray, binary: bool) -> Any:
    given = httpclient.InferInput("input", list(x.shape), "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    return given


def test_tritonclient_json_and_binary_tensors_equal_onnxruntime(
    triton: Callable[..., Any], onnx_model_dir: Path
) -> None:
    client = triton(**{"params.top_n": 0})
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

    xs = _xs(4, 1)
    expected = onnx_direct(onnx_model_dir, xs)
    for binary_in in (False, True):
        for binary_out in (False, True):
            wanted = [httpclient.InferRequestedOutput("prob", binary_data=binary_out)]
            result = client.infer(NAME, [_input(xs, binary_in)], outputs=wanted)
            got = result.as_numpy("prob")
            assert got.dtype == np.float32 and got.shape == (4, 10)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
            raw = result.get_response()["outputs"][0]
            assert ("data" in raw) == (not binary_out)
    # no outputs named: Triton's client asks for every output in binary
    one = client.infer(NAME, [_input(xs[:1], True)], request_id="r-7")
    assert one.get_response()["id"] == "r-7"
    np.testing.assert_allclose(one.as_numpy("prob"), expected[:1], rtol=0, atol=1e-5)


def test_tritonclient_gets_the_top_n_in_binary(
    triton: Callable[..., Any], onnx_model_dir: Path
) -> None:
    client = triton(**{"params.top_n": 3})
    xs = _xs(2, 2)
    expected = onnx_direct(onnx_model_dir, xs)
    top = client.infer(NAME, [_input(xs, True)]).as_numpy("topn")
    assert top.shape == (2, 3, 2)
    for row, scores in zip(top, expected):
        assert [int(i) for i in row[:, 0]] == list(np.argsort(-scores)[:3])
        np.testing.assert_allclose(row[:, 1], np.sort(scores)[::-1][:3], rtol=1e-6)


def test_tritonclient_sees_the_errors(triton: Callable[..., Any]) -> None:
    client = triton()
    bad = _xs(1, 3)[:, :, :16, :16]
    with pytest.raises(InferenceServerException, match=r"\(3, 16, 16\) does not fit"):
        client.infer(NAME, [_input(bad, True)])
    with pytest.raises(InferenceServerException, match="no model 'resnet'"):
        client.infer("resnet", [_input(_xs(1, 4), True)])
