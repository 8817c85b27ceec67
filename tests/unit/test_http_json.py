"""The HTTP front door's JSON <-> records mapping, and how it is switched on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoo_serving.cli import _load, build_parser
from zoo_serving.config import load_config
from zoo_serving.http import model_name
from zoo_serving.http.bodies import (
    HttpError,
    parse_instances,
    parse_v2_inputs,
    predictions,
    split_batch,
    v2_output_specs,
    v2_outputs,
)
from zoo_serving.http.limits import MAX_JSON_CONTAINERS, parse_json


def _v2(**fields: object) -> dict:
    spec = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
    spec.update(fields)
    return {"inputs": [spec]}


def test_v2_inputs_flat_or_nested_in_their_datatype() -> None:
    flat, _ = parse_v2_inputs(_v2())
    nested, wanted = parse_v2_inputs(_v2(data=[[1, 2, 3], [4, 5, 6]], datatype="INT16"))
    assert flat["x"].dtype == np.float32 and flat["x"].shape == (2, 3)
    assert nested["x"].dtype == np.int16 and nested["x"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert wanted is None
    assert parse_v2_inputs({**_v2(), "outputs": [{"name": "prob"}]})[1] == ["prob"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": []}, "non-empty list"),
        (_v2(shape=[2, -3]), "non-negative integers"),
        (_v2(datatype="BYTES"), "BYTES is not supported"),
        (_v2(datatype="FLOAT"), "not one of BOOL"),
        (_v2(data=[1, 2, 3]), "holds 6 values, but 'data' has 3"),
        (_v2(data=[1.5] * 6, datatype="INT32"), "takes integers"),
        (_v2(data=[300] * 6, datatype="UINT8"), "do not fit UINT8"),
        (_v2(data=[1, 0, 1, 0, 1, 0], datatype="BOOL"), "true/false"),
        (_v2(data=[[1, 2, 3], [4, 5]]), "ragged"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "'name'"),
        # sizes an int64 cannot count: once a wrapped np.prod, then numpy's ValueError, a 500
        (_v2(shape=[2**62, 4], data=[]), r"more values than an int64 counts"),
        (_v2(shape=[0, 2**40, 2**40], data=[]), r"more values than an int64 counts"),
        (_v2(shape=[2**64], data=[]), r"more values than an int64 counts"),
        (_v2(shape=[1] * 33, data=[1]), "33 dims is over the limit of 32"),
    ],
)
def test_v2_inputs_refused_with_a_message(body: dict, fragment: str) -> None:
    with pytest.raises(HttpError, match=fragment) as info:
        parse_v2_inputs(body)
    assert info.value.status == 400


def test_split_batch_by_the_models_record_rank() -> None:
    batch = {"x": np.zeros((3, 4)), "y": np.ones((3, 2, 2))}
    records, batched = split_batch(batch, {"x": 1, "y": 2})
    assert batched and len(records) == 3 and records[0]["y"].shape == (2, 2)
    one, batched = split_batch({"x": np.zeros(4)}, [1])
    assert not batched and one[0]["x"].shape == (4,)
    with pytest.raises(HttpError, match="disagree"):
        split_batch({"x": np.zeros((3, 4)), "y": np.ones((2, 2, 2))}, {"x": 1, "y": 2})


def test_v2_outputs_stack_records_and_turn_top_n_into_pairs() -> None:
    results = [np.full(4, i, np.float32) for i in range(2)]
    (out,) = v2_outputs(results, ["prob"], batched=True)
    assert (out["name"], out["shape"], out["datatype"]) == ("prob", [2, 4], "FP32")
    (top,) = v2_outputs([[[3, 0.5], [1, 0.25]]], [], batched=False)
    assert (top["name"], top["shape"], top["data"]) == ("topn", [2, 2], [3, 0.5, 1, 0.25])
    with pytest.raises(HttpError, match="not among"):
        v2_outputs(results, ["prob"], batched=True, wanted=["logits"])


def test_instances_tensors_images_and_sparse() -> None:
    body = {
        "instances": [
            {"t": [[1, 2], [3, 4]], "img": "/9j/", "ids": [1, 2]},
            {"t": {"shape": [2, 2], "data": [5.0], "indices": [[1], [0]]}, "img": {"b64": "AA=="}},
        ]
    }
    first, second = parse_instances(body, [np.dtype(np.float32), np.dtype("u1"), np.dtype("i8")])
    assert first["t"].dtype == np.float32 and first["t"].shape == (2, 2)
    assert first["img"] == b"\xff\xd8\xff" and second["img"] == b"\x00"
    assert first["ids"].dtype == np.int64  # the model's integer input
    assert second["t"].tolist() == [[0, 0], [5, 0]]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"instance": []}, "instances"),
        ({"instances": [{"t": "a|b"}]}, "string tensors"),
        ({"instances": [{"t": ["a", "b"]}]}, "string tensors"),
        ({"instances": [{"t": "not base64!"}]}, "not base64"),
        ({"instances": [{"t": {"path": "/etc/passwd"}}]}, "b64"),
    ],
)
def test_instances_refused_with_a_message(body: dict, fragment: str) -> None:
    with pytest.raises(HttpError, match=fragment):
        parse_instances(body)


def test_predictions_read_as_the_original_client_reads_them() -> None:
    reply = json.loads(json.dumps(predictions([np.arange(6.0).reshape(2, 3), [[1, 0.9]]])))
    tensor = json.loads(json.loads(reply["predictions"][0])["value"])
    assert np.array(tensor["data"]).reshape(tensor["shape"]).shape == (2, 3)
    assert json.loads(json.loads(reply["predictions"][1])["value"]) == [[1, 0.9]]


def test_start_http_flag_sets_http_port() -> None:
    args = build_parser().parse_args(["start", "--http", "8081", "-c", "cfg.yaml"])
    args.config = {"model": {"path": "/models/resnet.onnx"}}
    cfg = _load(args)
    assert cfg.http.port == 8081 and cfg.http.host == "127.0.0.1"
    assert model_name(cfg) == "resnet"
    assert model_name(load_config({"model": {"path": "/m/resnet50"}})) == "resnet50"
    assert model_name(cfg.replace(**{"http.model_name": "r"})) == "r"


def test_zero_size_tensors_with_countable_dims_still_parse() -> None:
    tensors, _ = parse_v2_inputs(_v2(shape=[0, 2**20, 2**20], data=[]))
    assert tensors["x"].shape == (0, 2**20, 2**20)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests 100000 levels deep, over the limit of 64"),
        (b'{"inputs": ' + b"[" * 65 + b"]" * 65 + b"}", "nests 66 levels deep"),
        (b"[" * 100_000, "nests 100000 levels deep"),  # unbalanced: Python would recurse
        (b"[" + b"[]," * MAX_JSON_CONTAINERS + b"[]]", "arrays and objects, over the limit"),
        (b'{"inputs": [', "not valid JSON"),
    ],
    ids=["deep", "deep-in-a-body", "deep-unclosed", "many-arrays", "malformed"],
)
def test_json_too_deep_or_too_many_arrays_is_refused_before_parsing(
    body: bytes, fragment: str
) -> None:
    with pytest.raises(HttpError, match=fragment) as info:
        parse_json(body)
    assert info.value.status == 400


def test_json_depth_ignores_brackets_in_strings() -> None:
    text = json.dumps({"id": "[" * 500 + '\\"{', "inputs": [{"data": [[1, 2], [3, 4]]}]})
    assert parse_json(text.encode())["inputs"][0]["data"] == [[1, 2], [3, 4]]


def test_v2_output_specs_are_the_top_n_output_when_workers_answer_with_it() -> None:
    info = {"outputs": [{"name": "prob", "dtype": "<f4", "shape": [-1, 10]}]}
    assert v2_output_specs(info) == [{"name": "prob", "datatype": "FP32", "shape": [-1, 10]}]
    assert v2_output_specs({**info, "top_n": 3}) == [
        {"name": "topn", "datatype": "FP32", "shape": [-1, 3, 2]}
    ]
    assert v2_output_specs({**info, "top_n": 50})[0]["shape"] == [-1, 10, 2]
    free = {"outputs": [{"name": "p", "dtype": "<f4", "shape": [-1, -1]}], "top_n": 5}
    assert v2_output_specs(free)[0]["shape"] == [-1, -1, 2]
