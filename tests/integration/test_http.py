"""The HTTP front door, served by a real uvicorn on a free port and called with httpx: answers
equal to ONNX Runtime's, health before and after the model is ready, and JSON errors with a
status that fits."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi  # noqa: F401  (the HTTP door runs on it)
import httpx
import numpy as np
import pytest
import uvicorn  # noqa: F401

from conftest import jpeg
from helpers import assert_top_n, decoded_image, onnx_direct
from zoo_serving.broker.embedded import free_port

NAME = "cnn"
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture
def http_config(redis_url: str, stream: str, onnx_model_dir: Path, tmp_path: Path) -> Any:
    """Config of a front door on a free port for the test's stream."""
    return {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "http": {"port": free_port(), "model_name": NAME},
        "log": {"dir": str(tmp_path / "work")},
    }


@pytest.fixture
def served(serve: Callable[..., Any], onnx_model_dir: Path, http_config: Any) -> Callable[..., Any]:
    """Start a Server whose config has http.port (the front door comes up with it); returns
    an httpx client on it."""
    clients: list[Any] = []

    def start(**dotted: Any) -> Any:
        server = serve(
            onnx_model_dir,
            **{"http.port": http_config["http"]["port"], "http.model_name": NAME, **dotted},
        )
        client = httpx.Client(base_url=server.http.url, timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


@pytest.fixture
def front_door(http_config: Any) -> Iterator[Any]:
    """A front door alone, no worker yet."""
    from zoo_serving.http import serve_http

    server = serve_http(http_config)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    server.stop()


def _v2(name: str, arr: np.ndarray, datatype: str = "FP32", flat: bool = False) -> dict:
    data = arr.ravel().tolist() if flat else arr.tolist()
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}


def _records(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


# ---------------------------------------------------------------- health


def test_health_before_and_after_the_model_is_ready(
    front_door: Any, serve: Callable[..., Any], onnx_model_dir: Path
) -> None:
    assert front_door.get("/v2/health/live").json() == {"live": True}
    ready = front_door.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert front_door.get(f"/v2/models/{NAME}/ready").status_code == 503
    assert front_door.get(f"/v2/models/{NAME}").status_code == 503
    early = front_door.post(INFER, json={"inputs": [_v2("input", _records(1))]})
    assert early.status_code == 503 and "not ready" in early.json()["error"]

    serve(onnx_model_dir)  # the workers: load, warm up, say ready (with their next heartbeat)
    deadline = time.monotonic() + 10
    while (ready := front_door.get("/v2/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    model_ready = front_door.get(f"/v2/models/{NAME}/ready")
    assert (model_ready.status_code, model_ready.json()) == (200, {"name": NAME, "ready": True})
    meta = front_door.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    # served with params.top_n 3: infer answers with the output topn, so that is what is listed
    assert meta["outputs"] == [{"name": "topn", "datatype": "FP32", "shape": [-1, 3, 2]}]
    missing = front_door.get("/v2/models/resnet/ready")
    assert missing.status_code == 404 and "cnn" in missing.json()["error"]
    assert front_door.get("/v2").json()["name"] == "zoo_serving"


# ---------------------------------------------------------------- answers


def test_v2_infer_equals_onnxruntime(served: Callable[..., Any], onnx_model_dir: Path) -> None:
    client = served(**{"params.top_n": 0})
    batch = _records(3, seed=1)
    expected = onnx_direct(onnx_model_dir, batch)

    reply = client.post(INFER, json={"id": "req-1", "inputs": [_v2("input", batch)]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model_name"], body["id"]) == (NAME, "req-1")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("prob", "FP32", [3, 10])
    np.testing.assert_allclose(np.reshape(out["data"], (3, 10)), expected, rtol=0, atol=1e-5)

    # one record without a batch dimension, flat data
    single = client.post(INFER, json={"inputs": [_v2("input", batch[1], flat=True)]}).json()
    (out,) = single["outputs"]
    assert out["shape"] == [10]
    np.testing.assert_allclose(out["data"], expected[1], rtol=0, atol=1e-5)


def test_v2_top_n_is_an_output_of_index_probability_pairs(
    served: Callable[..., Any], onnx_model_dir: Path
) -> None:
    client = served(**{"params.top_n": 3})
    batch = _records(2, seed=2)
    reply = client.post(INFER, json={"inputs": [_v2("input", batch)]})
    (out,) = reply.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("topn", "FP32", [2, 3, 2])
    pairs = np.reshape(out["data"], (2, 3, 2))
    for row, scores in zip(pairs, onnx_direct(onnx_model_dir, batch)):
        assert_top_n([(int(i), p) for i, p in row], scores, 3)


def test_predict_instances_as_cluster_serving(
    served: Callable[..., Any], onnx_model_dir: Path
) -> None:
    client = served(**{"params.top_n": 0})
    tensor = _records(1, seed=3)[0]
    image = jpeg(31)
    body = {"instances": [{"t": tensor.tolist()}, {"t": base64.b64encode(image).decode()}]}
    reply = client.post("/predict", content=json.dumps(body))
    assert reply.status_code == 200, reply.text
    expected = onnx_direct(onnx_model_dir, np.stack([tensor, decoded_image(image)]))
    predictions = reply.json()["predictions"]
    assert len(predictions) == 2
    for text, want in zip(predictions, expected):
        # how the original client's http_json_to_ndarray reads a prediction
        value = json.loads(json.loads(text)["value"])
        got = np.array(value["data"]).reshape(value["shape"])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- errors


def test_bad_requests_are_400_with_a_message(served: Callable[..., Any]) -> None:
    client = served(**{"params.top_n": 0})
    record = _records(1)

    def infer(inputs: Any) -> Any:
        return client.post(INFER, json={"inputs": inputs})

    malformed = client.post(INFER, content=b'{"inputs": [')
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]

    small = np.zeros((1, 3, 16, 16), np.float32)
    wrong_shape = infer([_v2("input", small)])
    assert wrong_shape.status_code == 400
    assert wrong_shape.json()["code"] == "bad_shape"
    assert "(3, 16, 16)" in wrong_shape.json()["error"]

    count = infer([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0]}])
    assert count.status_code == 400
    assert "holds 3072 values, but 'data' has 1" in count.json()["error"]

    unknown = infer([_v2("input", record, datatype="FP99")])
    assert unknown.status_code == 400 and "FP99" in unknown.json()["error"]

    wider = infer([_v2("input", record.astype(np.float64), datatype="FP64")])
    assert wider.status_code == 400
    assert wider.json()["code"] == "bad_dtype" and "float64" in wider.json()["error"]

    words = infer([{"name": "input", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}])
    assert words.status_code == 400 and "expected numbers" in words.json()["error"]

    predict = client.post("/predict", json={"instances": 3})
    assert predict.status_code == 400 and "instances" in predict.json()["error"]

    ragged = client.post("/predict", json={"instances": [{"t": [[1, 2], [3]]}]})
    assert ragged.status_code == 400 and "ragged" in ragged.json()["error"]


def test_no_answer_in_time_is_a_504_and_a_full_stream_a_503(
    http_config: Any, redis_client: Any, stream: str
) -> None:
    from zoo_serving import keys
    from zoo_serving.http import serve_http

    # a worker that said ready and then hung: its records are never answered
    redis_client.set(keys.ready(stream), "hung-worker")
    redis_client.set(keys.max_len(stream), 1)  # data.max_queue_len: 1, published before clients
    http_config["http"]["timeout_s"] = 0.3
    front = serve_http(http_config)
    try:
        with httpx.Client(base_url=front.url, timeout=30) as client:
            late = client.post(INFER, json={"inputs": [_v2("input", _records(1))]})
            assert late.status_code == 504, late.text
            assert late.json()["code"] == "timeout" and "http.timeout_s" in late.json()["error"]

            full = client.post(INFER, json={"inputs": [_v2("input", _records(1))]})
            assert full.status_code == 503, full.text
            assert full.json()["code"] == "queue_full"
    finally:
        front.stop()


def test_a_taken_port_is_a_clear_error(front_door: Any, http_config: Any) -> None:
    from zoo_serving.errors import ServerError
    from zoo_serving.http import serve_http

    with pytest.raises(ServerError, match="cannot listen on .*; set http.port"):
        serve_http(http_config)  # the front door fixture holds that port
    assert front_door.get("/v2/health/live").status_code == 200


# ---------------------------------------------------------------- limits


def test_a_chunked_body_over_the_limit_is_a_413_and_never_buffered(http_config: Any) -> None:
    import tracemalloc

    from zoo_serving.http import serve_http

    http_config["data"]["max_payload_bytes"] = 256 * 1024  # a body limit of 1 MiB
    front = serve_http(http_config)
    chunk = b"[" + b"1," * (1 << 19)
    sent = []

    def upload() -> Iterator[bytes]:  # 64 MiB with no Content-Length: Transfer-Encoding chunked
        for _ in range(64):
            sent.append(len(chunk))
            yield chunk

    tracemalloc.start()
    try:
        with httpx.Client(base_url=front.url, timeout=60) as client:
            reply = client.post(INFER, content=upload())
            declared = client.post(INFER, content=b" " * (2 << 20))  # Content-Length: 2 MiB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        front.stop()
    assert (reply.status_code, reply.json()["code"]) == (413, "too_large"), reply.text
    assert "over the limit of 1048576 bytes" in reply.json()["error"]
    assert sum(sent) > 32 << 20  # the client did send far past the limit
    assert peak < 8 << 20, f"{peak} bytes held while {sum(sent)} came in"
    assert (declared.status_code, declared.json()["code"]) == (413, "too_large")


def test_deep_json_is_a_400_not_a_crash(front_door: Any) -> None:
    deep = front_door.post(INFER, content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400, deep.text
    assert deep.json() == {
        "error": "the JSON nests 100000 levels deep, over the limit of 64",
        "code": "bad_input",
    }
    nested = {"instances": [{"t": json.loads("[" * 70 + "1" + "]" * 70)}]}
    predict = front_door.post("/predict", content=json.dumps(nested))
    assert predict.status_code == 400 and "nests 73 levels" in predict.json()["error"]
    overflow = front_door.post(
        INFER,
        json={"inputs": [{"name": "input", "shape": [2**62, 4], "datatype": "FP32", "data": []}]},
    )
    assert overflow.status_code == 400 and "int64" in overflow.json()["error"], overflow.text


def test_unknown_routes_and_methods_answer_the_json_error(front_door: Any) -> None:
    missing = front_door.get("/v3/anything")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert "no route GET /v3/anything; the routes are POST /predict" in missing.json()["error"]
    wrong = front_door.post("/v2/health/live")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]
    for path in (f"/v2/models/{NAME}/versions/2", f"/v2/models/{NAME}/versions/2/ready"):
        version = front_door.get(path)
        assert (version.status_code, version.json()["code"]) == (404, "no_version"), path
        assert "it has version(s) 1" in version.json()["error"]
    infer = front_door.post(f"/v2/models/{NAME}/versions/2/infer", json={"inputs": []})
    assert (infer.status_code, infer.json()["code"]) == (404, "no_version")


@pytest.mark.parametrize("top_n", [0, 3])
def test_metadata_outputs_are_exactly_what_infer_answers_and_accepts(
    served: Callable[..., Any], top_n: int
) -> None:
    client = served(**{"params.top_n": top_n})
    meta = client.get(f"/v2/models/{NAME}").json()
    offered = [o["name"] for o in meta["outputs"]]
    assert offered == (["topn"] if top_n else ["prob"])
    batch = _records(2, seed=4)

    every = client.post(INFER, json={"inputs": [_v2("input", batch)]}).json()["outputs"]
    assert [o["name"] for o in every] == offered
    for out, described in zip(every, meta["outputs"]):
        assert out["datatype"] == described["datatype"]
        assert len(out["shape"]) == len(described["shape"])
        assert all(d in (-1, got) for d, got in zip(described["shape"], out["shape"]))
    for name in offered:
        body = {"inputs": [_v2("input", batch)], "outputs": [{"name": name}]}
        one = client.post(INFER, json=body)
        assert one.status_code == 200, one.text
        assert [o["name"] for o in one.json()["outputs"]] == [name]
    other = "prob" if top_n else "topn"
    refused = client.post(
        INFER, json={"inputs": [_v2("input", batch)], "outputs": [{"name": other}]}
    )
    assert refused.status_code == 400
    assert (
        f"outputs ['{other}'] are not among the outputs of model 'cnn': {offered}"
        in (refused.json()["error"])
    )


def test_a_version_of_the_model_answers_like_the_model(served: Callable[..., Any]) -> None:
    client = served(**{"params.top_n": 0})
    base = f"/v2/models/{NAME}/versions/1"
    meta = client.get(base).json()
    assert meta == client.get(f"/v2/models/{NAME}").json()
    assert meta["versions"] == ["1"]
    assert client.get(f"{base}/ready").json() == {"name": NAME, "ready": True}
    reply = client.post(f"{base}/infer", json={"inputs": [_v2("input", _records(1)[0])]})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["model_name"], reply.json()["model_version"]) == (NAME, "1")
    assert reply.json()["outputs"][0]["shape"] == [10]


def test_a_payload_over_max_payload_bytes_is_refused_before_it_is_enqueued(
    http_config: Any, redis_client: Any, stream: str
) -> None:
    from zoo_serving import keys
    from zoo_serving.http import serve_http

    redis_client.set(keys.ready(stream), "hung-worker")  # nothing would ever answer
    http_config["data"]["max_payload_bytes"] = 10_000
    http_config["http"]["timeout_s"] = 5
    front = serve_http(http_config)
    try:
        with httpx.Client(base_url=front.url, timeout=30) as client:
            tensor = client.post(INFER, json={"inputs": [_v2("input", _records(2))]})
            image = base64.b64encode(jpeg(1, 400, 400)).decode()
            predict = client.post("/predict", json={"instances": [{"t": image}]})
    finally:
        front.stop()
    assert (tensor.status_code, tensor.json()["code"]) == (413, "too_large"), tensor.text
    # no worker published the model, so the batch is one record of 2 x 3 x 32 x 32 float32
    assert "input 'input': 24576 bytes is over the limit of 10000" in tensor.json()["error"]
    assert (predict.status_code, predict.json()["code"]) == (413, "too_large"), predict.text
    assert redis_client.xlen(stream) == 0  # nothing went to Redis


@pytest.mark.parametrize("processes", [0, 2])
def test_the_door_in_a_thread_or_in_processes_answers_the_same(
    served: Callable[..., Any], onnx_model_dir: Path, processes: int
) -> None:
    client = served(**{"params.top_n": 0, "http.processes": processes})
    batch = _records(2, seed=9)
    expected = onnx_direct(onnx_model_dir, batch)
    for _ in range(4):  # two processes: the kernel hands connections to either
        with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
            reply = fresh.post(INFER, json={"inputs": [_v2("input", batch)]})
        assert reply.status_code == 200, reply.text
        (out,) = reply.json()["outputs"]
        np.testing.assert_allclose(
            np.asarray(out["data"]).reshape(out["shape"]), expected, atol=1e-5
        )
    assert client.get("/status.json").json()["ready"] in (True, False)
