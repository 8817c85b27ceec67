"""Triton's binary tensor extension, both ways: request bodies split at
Inference-Header-Content-Length into JSON and the inputs' bytes (no copy), answers with the
outputs asked for in binary after the JSON header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoo_serving.http import binary, bodies
from zoo_serving.http.bodies import HttpError


def _request(inputs: list[tuple[str, np.ndarray, bool]], **extra: object) -> tuple[bytes, str]:
    specs, blobs = [], []
    for name, arr, as_binary in inputs:
        spec: dict = {"name": name, "shape": list(arr.shape), "datatype": bodies.v2_name(arr.dtype)}
        if as_binary:
            spec["parameters"] = {"binary_data_size": arr.nbytes}
            blobs.append(arr.tobytes())
        else:
            spec["data"] = arr.ravel().tolist()
        specs.append(spec)
    head = json.dumps({"inputs": specs, **extra}).encode()
    return head + b"".join(blobs), str(len(head))


def _parse(raw: bytes, header: str | None) -> dict[str, np.ndarray]:
    body, data = binary.split_body(raw, header)
    if data is None:
        return bodies.parse_v2_inputs(body)[0]
    given = binary.BinaryInputs(data)
    tensors = bodies.parse_v2_inputs(body, given)[0]
    given.check_used()
    return tensors


def test_binary_and_json_inputs_mix_in_input_order() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1, -2, 3], dtype=np.int64)
    c = np.array([True, False])
    raw, header = _request([("a", a, True), ("b", b, False), ("c", c, True)])
    got = _parse(raw, header)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["c"], c)
    assert got["a"].base is not None  # a view of the body, not a copy


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw, h: (raw, "x1"), "is not a length within the body"),
        (lambda raw, h: (raw, str(len(raw) + 1)), "is not a length within the body"),
        (lambda raw, h: (raw[:-4], h), "the binary part ends at byte"),
        (lambda raw, h: (raw + b"\0\0\0\0", h), "add up to"),
    ],
)
def test_a_body_that_does_not_add_up_is_a_400(mangle: object, message: str) -> None:
    raw, header = _request([("a", np.zeros(4, np.float32), True)])
    raw, header = mangle(raw, header)  # type: ignore[operator]
    with pytest.raises(HttpError, match=message) as caught:
        _parse(raw, header)
    assert caught.value.status == 400


def test_a_binary_size_that_does_not_fit_the_shape_is_a_400() -> None:
    spec = {"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}
    head = json.dumps({"inputs": [spec]}).encode()
    with pytest.raises(HttpError, match="does not hold FP32 \\[4\\], which takes 16 bytes"):
        _parse(head + bytes(12), str(len(head)))
    bools = {"name": "c", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}
    head = json.dumps({"inputs": [bools]}).encode()
    with pytest.raises(HttpError, match="BOOL bytes must be 0 or 1"):
        _parse(head + b"\x01\x07", str(len(head)))


def test_answers_carry_the_outputs_asked_for_in_binary() -> None:
    prob = np.array([[0.25, 0.75]], np.float32)
    ids = np.array([[7]], np.int64)
    content = {
        "model_name": "m",
        "outputs": [
            {"name": "prob", "shape": [1, 2], "datatype": "FP32"},
            {"name": "ids", "shape": [1, 1], "datatype": "INT64"},
        ],
    }
    request = {"outputs": [{"name": "prob", "parameters": {"binary_data": True}}, {"name": "ids"}]}
    answer, head = binary.encode_answer(content, [prob, ids], binary.binary_outputs(request))
    assert head is not None
    meta = json.loads(answer[:head])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in meta["outputs"][0] and meta["outputs"][1]["data"] == [7]
    np.testing.assert_array_equal(np.frombuffer(answer[head:], np.float32), prob.ravel())
    every = binary.binary_outputs({"parameters": {"binary_data_output": True}})
    answer, head = binary.encode_answer(content, [prob, ids], every)
    assert head is not None and len(answer) - head == 8 + 8
    plain, none = binary.encode_answer(content, [prob, ids], binary.binary_outputs({}))
    assert none is None and json.loads(plain)["outputs"][0]["data"] == [0.25, 0.75]
