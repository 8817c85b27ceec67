"""Model-directory detection and the backend registry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from zoo_serving.backends import (
    REGISTRY,
    Model,
    ModelLayout,
    TensorSpec,
    detect_model,
    load_model,
    resolve_backend,
)
from zoo_serving.errors import (
    AmbiguousModelError,
    ConfigError,
    IncompleteModelError,
    ModelNotFoundError,
)

# the repository's parent holds shared/fixtures (tests/unit/<file> -> tests -> repo -> parent)
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def _make(root: Path, *names: str) -> Path:
    """Create empty files (and directories, for names ending in /) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = root / name
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    return root


def _fixture(*parts: str) -> Path:
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is not present in this checkout")
    return path


# ---------------------------------------------------------------- the detection table


@pytest.mark.parametrize(
    ("names", "backend", "main", "kind", "extra"),
    [
        (["model.onnx"], "onnx", "model.onnx", "", {}),
        (["model.pt"], "torch", "model.pt", "", {}),
        (["model.pth"], "torch", "model.pth", "", {}),
        (
            ["saved_model.pb", "variables/", "variables/variables.index"],
            "tensorflow",
            "saved_model.pb",
            "savedmodel",
            {},
        ),
        (["frozen.pb"], "tensorflow", "frozen.pb", "frozen", {}),
        (
            ["frozen.pb", "graph_meta.json"],
            "tensorflow",
            "frozen.pb",
            "frozen",
            {"graph_meta": "graph_meta.json"},
        ),
        (["x.prototxt", "x.caffemodel"], "caffe", "x.prototxt", "", {"caffemodel": "x.caffemodel"}),
        (["x.xml", "x.bin"], "openvino", "x.xml", "", {"bin": "x.bin"}),
        (["x.model"], "bigdl", "x.model", "", {}),
        # the only two files of a pair need not share a stem
        (
            ["deploy.prototxt", "w.caffemodel"],
            "caffe",
            "deploy.prototxt",
            "",
            {"caffemodel": "w.caffemodel"},
        ),
        # other files beside the model do not matter
        (["model.onnx", "README.md", "labels.txt"], "onnx", "model.onnx", "", {}),
        (["MODEL.ONNX"], "onnx", "MODEL.ONNX", "", {}),
    ],
    ids=[
        "onnx",
        "pt",
        "pth",
        "savedmodel",
        "frozen",
        "frozen+meta",
        "caffe",
        "openvino",
        "bigdl",
        "caffe-other-stems",
        "onnx-with-extras",
        "upper-case",
    ],
)
def test_detection_table(
    tmp_path: Path,
    names: list[str],
    backend: str,
    main: str,
    kind: str,
    extra: dict[str, str],
) -> None:
    root = _make(tmp_path / "m", *names)
    layout = detect_model(root)
    assert isinstance(layout, ModelLayout)
    assert layout.backend == backend
    assert layout.main == root / main
    assert layout.kind == kind
    assert layout.files == {k: root / v for k, v in extra.items()}


def test_detect_accepts_str_path(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", "net.onnx")
    assert detect_model(str(root)).main == root / "net.onnx"


@pytest.mark.parametrize(
    ("name", "backend", "kind"),
    [
        ("m.onnx", "onnx", ""),
        ("m.pt", "torch", ""),
        ("m.pth", "torch", ""),
        ("m.model", "bigdl", ""),
        ("m.pb", "tensorflow", "frozen"),
    ],
)
def test_single_file_path(tmp_path: Path, name: str, backend: str, kind: str) -> None:
    # a second model beside it does not make a file path ambiguous
    _make(tmp_path, name, "other.onnx" if backend != "onnx" else "other.pt")
    layout = detect_model(tmp_path / name)
    assert layout.backend == backend
    assert layout.main == tmp_path / name
    assert layout.kind == kind


# ---------------------------------------------------------------- errors


def test_empty_dir_is_model_not_found(tmp_path: Path) -> None:
    root = _make(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError) as info:
        detect_model(root)
    assert str(root) in str(info.value)
    assert "*.onnx" in str(info.value)  # says what it expected


def test_dir_without_model_lists_files_found(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", "README.md", "labels.txt", "weights.h5")
    with pytest.raises(ModelNotFoundError) as info:
        detect_model(root)
    message = str(info.value)
    for name in ("README.md", "labels.txt", "weights.h5"):
        assert name in message


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        detect_model(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    "names",
    [
        ["a.onnx", "b.pt"],
        ["a.onnx", "b.onnx"],
        ["net.xml", "net.bin", "net.onnx"],
        ["saved_model.pb", "variables/", "m.pt"],
    ],
)
def test_two_models_are_ambiguous(tmp_path: Path, names: list[str]) -> None:
    root = _make(tmp_path / "m", *names)
    with pytest.raises(AmbiguousModelError) as info:
        detect_model(root)
    message = str(info.value)
    model_files = [n for n in names if not n.endswith(("/", ".bin"))]
    for name in model_files:
        assert name in message


@pytest.mark.parametrize(
    ("names", "named", "missing"),
    [
        (["x.prototxt"], "x.prototxt", ".caffemodel"),
        (["x.caffemodel"], "x.caffemodel", ".prototxt"),
        (["x.xml"], "x.xml", ".bin"),
        (["x.bin"], "x.bin", ".xml"),
        (["a.prototxt", "b.prototxt", "c.caffemodel"], "b.prototxt", ".caffemodel"),
    ],
)
def test_half_a_model_is_incomplete(
    tmp_path: Path, names: list[str], named: str, missing: str
) -> None:
    root = _make(tmp_path / "m", *names)
    with pytest.raises(IncompleteModelError) as info:
        detect_model(root)
    assert named in str(info.value)
    assert missing in str(info.value)


# ---------------------------------------------------------------- real fixtures


def test_fixture_caffe() -> None:
    root = _fixture("caffe")
    layout = detect_model(root)
    assert layout.backend == "caffe"
    assert layout.main == root / "test.prototxt"
    assert layout.files == {"caffemodel": root / "test.caffemodel"}


def test_fixture_bigdl() -> None:
    root = _fixture("bigdl")
    layout = detect_model(root)
    assert layout.backend == "bigdl"
    assert layout.main == root / "bigdl_lenet.model"


def test_fixture_tensorflow_frozen() -> None:
    root = _fixture("tensorflow", "frozen_dense")
    layout = detect_model(root)
    assert (layout.backend, layout.kind) == ("tensorflow", "frozen")
    assert layout.main == root / "frozen_inference_graph.pb"
    assert layout.files == {"graph_meta": root / "graph_meta.json"}


def test_fixture_tensorflow_savedmodel() -> None:
    root = _fixture("tensorflow", "saved_model_signature")
    layout = detect_model(root)
    assert (layout.backend, layout.kind) == ("tensorflow", "savedmodel")
    assert layout.main == root / "saved_model.pb"


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["onnx", "torch", "tensorflow", "caffe", "bigdl", "openvino"])
def test_every_detected_backend_resolves_to_a_model_class(name: str) -> None:
    cls = resolve_backend(name)
    assert issubclass(cls, Model) and cls.backend == name


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_backend("tensorrt")
    message = str(info.value)
    assert "model.backend" in message
    assert "'tensorrt'" in message
    for known in REGISTRY:
        assert known in message
    assert info.value.details["key"] == "model.backend"


class EchoModel(Model):
    """A third-party backend: one float32 input of 3 values, output = input * 2."""

    backend = "echo"

    def _load(self) -> None:
        self._inputs = [TensorSpec("x", np.dtype(np.float32), (None, 3))]
        self._outputs = [TensorSpec("y", np.dtype(np.float32), (None, 3))]

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": batch["x"] * 2}


class NotAModel:
    pass


def test_import_string_backend() -> None:
    assert resolve_backend(f"{__name__}:EchoModel") is EchoModel


def test_load_model_with_import_string_backend(tmp_path: Path) -> None:
    root = _make(tmp_path / "m", "weights.onnx")
    with load_model(root, backend=f"{__name__}:EchoModel", threads=1) as model:
        assert isinstance(model, EchoModel)
        assert model.loaded
        assert model.options.threads == 1
        out = model.predict({"x": np.ones((2, 3), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((2, 3), 2, np.float32))
    assert not model.loaded


@pytest.mark.parametrize(
    "target",
    [f"{__name__}:NotAModel", f"{__name__}:Missing", "no_such_module_zs:Model"],
)
def test_bad_import_strings_are_config_errors(target: str) -> None:
    with pytest.raises(ConfigError, match="model.backend"):
        resolve_backend(target)


def test_registry_names_resolve_lazily() -> None:
    assert set(REGISTRY) >= {"onnx", "torch"}
    for target in REGISTRY.values():
        module, sep, attr = target.partition(":")
        assert sep and module.startswith("zoo_serving.backends.") and attr
