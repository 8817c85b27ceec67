"""The model repository on disk: layout, model.yaml settings, version policies, stability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zoo_serving.config import load_config
from zoo_serving.config.checks import check_size as parse_size
from zoo_serving.errors import ConfigError
from zoo_serving.repository import ModelSettings, StableScanner, VersionPolicy, scan


def onnx_file(path: Path) -> Path:
    """A real (tiny) ONNX model file: Identity on a float vector."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def defaults() -> ModelSettings:
    return ModelSettings.from_config(
        load_config({"model": {"path": "m"}, "params": {"batch_size": 8, "top_n": 3}})
    )


def test_versions_settings_and_problems(tmp_path: Path) -> None:
    onnx_file(tmp_path / "resnet" / "1" / "m.onnx")
    onnx_file(tmp_path / "resnet" / "3" / "m.onnx")
    (tmp_path / "resnet" / "2").mkdir()  # empty: half-copied, not a version yet
    (tmp_path / "resnet" / "model.yaml").write_text("batch_size: 2\nweight: 3\nversions: all\n")
    onnx_file(tmp_path / "small" / "7" / "m.onnx")
    (tmp_path / "small" / "latest").mkdir()
    (tmp_path / "bad name!").mkdir()

    models = scan(tmp_path, defaults())

    assert sorted(models) == ["resnet", "small"]
    resnet = models["resnet"]
    assert sorted(resnet.versions) == [1, 3]
    assert resnet.versions[3].backend == "onnx"
    assert "2" in resnet.problems and "no model" in resnet.problems["2"].lower()
    assert resnet.settings.batch_size == 2 and resnet.settings.weight == 3.0
    assert resnet.settings.top_n == 3  # from config.yaml
    assert resnet.wanted_versions() == {1, 3}
    small = models["small"]
    assert small.wanted_versions() == {7}  # latest 1 by default
    assert small.settings.batch_size == 8
    assert "latest" in small.problems


def test_a_bad_model_yaml_is_a_problem_naming_the_key(tmp_path: Path) -> None:
    onnx_file(tmp_path / "m" / "1" / "m.onnx")
    (tmp_path / "m" / "model.yaml").write_text("batch_sise: 2\n")
    problem = scan(tmp_path, defaults())["m"].problems["model.yaml"]
    assert "batch_sise" in problem and "batch_size" in problem


def test_a_repository_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.repository"):
        scan(tmp_path / "nope", defaults())


@pytest.mark.parametrize(
    ("text", "available", "served"),
    [
        ("latest", {1, 2, 3}, {3}),
        ("latest 2", {1, 2, 3}, {2, 3}),
        ("all", {1, 5}, {1, 5}),
        ([1, 3], {1, 2, 3}, {1, 3}),
        ("2,4", {1, 2, 3}, {2}),
        (3, {1, 2, 3}, {3}),
        ("latest", set(), set()),
    ],
)
def test_version_policies(text: object, available: set[int], served: set[int]) -> None:
    assert VersionPolicy.parse("versions", text).select(available) == served


@pytest.mark.parametrize("text", ["latest 0", "newest", "[a]", "-1", ""])
def test_bad_version_policies_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="versions"):
        VersionPolicy.parse("versions", [text] if text.startswith("[") else text)


def test_sizes() -> None:
    assert parse_size("memory", "512m") == 512 << 20
    assert parse_size("memory", "2G") == 2 << 30
    assert parse_size("memory", "1.5gib") == int(1.5 * (1 << 30))
    assert parse_size("memory", 1000) == 1000
    with pytest.raises(ConfigError, match="memory"):
        parse_size("memory", "lots")


def test_poll_acts_only_on_versions_that_stood_still(tmp_path: Path) -> None:
    onnx_file(tmp_path / "m" / "1" / "m.onnx")
    scanner = StableScanner(tmp_path, defaults())
    assert scanner.scan()["m"].versions == {}  # first sight: not known to be stable yet
    assert sorted(scanner.scan()["m"].versions) == [1]
    # a version being copied in: its file grows between two scans
    part = onnx_file(tmp_path / "m" / "2" / "m.onnx")
    assert sorted(scanner.scan()["m"].versions) == [1]
    with open(part, "ab") as fh:
        fh.write(b"\0")
    os.utime(part, ns=(1, 1))
    assert sorted(scanner.scan()["m"].versions) == [1]  # changed since the last scan
    assert sorted(scanner.scan()["m"].versions) == [1, 2]  # stood still for one scan
