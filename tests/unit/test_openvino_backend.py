"""The OpenVINO backend on IRs the tests build (torch -> ONNX -> openvino.convert_model ->
openvino.save_model), compared with torch and ONNX Runtime; and the engine_type switch."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest
import torch

from conftest import _torch_cnn, build_onnx_cnn
from zoo_serving.backends import openvino_ir
from zoo_serving.backends.base import ModelOptions
from zoo_serving.backends.onnx_engine import onnx_model
from zoo_serving.backends.onnx_runtime import OnnxModel
from zoo_serving.backends.openvino_ir import OpenVinoModel
from zoo_serving.errors import (
    ConfigError,
    IncompleteModelError,
    InferenceError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
)

SEED = 0
ATOL = 1e-4


def torch_cnn() -> Any:
    """The CNN of ``build_onnx_cnn`` with the same seed: the reference answers."""
    torch.manual_seed(SEED)
    return _torch_cnn(10).eval()


def torch_direct(batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch_cnn()(torch.from_numpy(batch)).numpy()


def ort_direct(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": batch})[0]


def inputs(n: int, seed: int = 1, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_cnn(tmp_path_factory.mktemp("ov-onnx") / "cnn.onnx", seed=SEED)


@pytest.fixture(scope="module")
def ir_from_onnx(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IR converted from the ONNX file (free batch), saved with f32 weights."""
    path = tmp_path_factory.mktemp("ov-ir") / "cnn.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def ir_static_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IR converted from the torch module with its input fixed at 1x3x32x32."""
    path = tmp_path_factory.mktemp("ov-static") / "cnn.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch tracing notes
        model = ov.convert_model(
            torch_cnn(), example_input=torch.zeros(1, 3, 32, 32), input=[1, 3, 32, 32]
        )
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def ir_fixed_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IR whose batch of 2 is baked into a Reshape: it cannot take other batch sizes."""
    return build_fixed_batch_ir(tmp_path_factory.mktemp("ov-fixed") / "fixed.xml")


def build_fixed_batch_ir(path: Path) -> Path:
    """Conv then ``reshape(2, -1)``: row i of the output is record i, only in batches of 2."""
    module = FixedBatch().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=torch.zeros(2, 3, 8, 8), input=[2, 3, 8, 8])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


class FixedBatch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(SEED)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Any) -> Any:
        return self.conv(x).reshape(2, -1)


# ------------------------------------------------------------------ results


@pytest.mark.parametrize("n", [1, 3, 8])
def test_ir_matches_torch_and_onnxruntime(ir_from_onnx, onnx_path, n) -> None:
    x = inputs(n)
    with OpenVinoModel(str(ir_from_onnx), ModelOptions(threads=2)) as model:
        assert model.backend == "openvino" and model.image_layout == "CHW"
        [spec] = model.inputs
        assert spec.name == "input" and spec.dtype == np.float32
        assert spec.shape == (None, 3, 32, 32)
        assert [(o.name, o.shape) for o in model.outputs] == [("prob", (None, 10))]
        out = model.predict({"input": x})
    assert list(out) == ["prob"] and out["prob"].shape == (n, 10)
    np.testing.assert_allclose(out["prob"], torch_direct(x), rtol=0, atol=ATOL)
    np.testing.assert_allclose(out["prob"], ort_direct(onnx_path, x), rtol=0, atol=ATOL)


def test_batches_of_every_size_on_one_model(ir_from_onnx) -> None:
    """Full and partial batches, one after another, on one compiled model and request."""
    with OpenVinoModel(str(ir_from_onnx)) as model:
        for n in (8, 3, 8, 1, 5):
            x = inputs(n, seed=n)
            np.testing.assert_allclose(
                model.predict({"input": x})["prob"], torch_direct(x), rtol=0, atol=ATOL
            )


def test_onnx_file_through_openvino(onnx_path) -> None:
    x = inputs(3)
    with OpenVinoModel(str(onnx_path)) as model:
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, ort_direct(onnx_path, x), rtol=0, atol=ATOL)


def test_static_batch_is_made_dynamic(ir_static_batch) -> None:
    read = ov.Core().read_model(str(ir_static_batch))
    assert list(read.inputs[0].get_partial_shape().to_shape()) == [1, 3, 32, 32]
    x = inputs(5)
    with OpenVinoModel(str(ir_static_batch)) as model:
        # torch's converter names no output: it gets the name the TorchScript backend uses
        assert model.inputs[0].shape == (None, 3, 32, 32) and model.inputs[0].max_batch is None
        assert [(o.name, o.shape) for o in model.outputs] == [("output", (None, 10))]
        out = model.predict({model.inputs[0].name: x})["output"]
    np.testing.assert_allclose(out, torch_direct(x), rtol=0, atol=ATOL)


def test_a_batch_the_model_cannot_free_stays_fixed(ir_fixed_batch) -> None:
    x = inputs(2, shape=(3, 8, 8))
    with OpenVinoModel(str(ir_fixed_batch)) as model:
        assert model.inputs[0].max_batch == 2 and model.inputs[0].shape == (2, 3, 8, 8)
        out = model.predict({model.inputs[0].name: x})["output"]
        model.warmup(8)  # the warm-up batch takes the fixed size, not the configured one
    with torch.inference_mode():
        expected = FixedBatch().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)


def test_results_survive_the_next_inference(ir_from_onnx) -> None:
    a, b = inputs(4, seed=1), inputs(4, seed=2)
    with OpenVinoModel(str(ir_from_onnx)) as model:
        first = model.predict({"input": a})["prob"]
        kept = first.copy()
        model.predict({"input": b})
    np.testing.assert_array_equal(first, kept)


def test_fp16_weights_ir_loads(onnx_path, tmp_path) -> None:
    """save_model's default compresses weights to fp16: close to, not equal to, the f32 model."""
    path = tmp_path / "cnn16.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(path))
    x = inputs(3)
    with OpenVinoModel(str(path)) as model:
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, torch_direct(x), rtol=0, atol=1e-2)


def test_bf16_precision_on_request(ir_from_onnx) -> None:
    x = inputs(3)
    with OpenVinoModel(str(ir_from_onnx), precision="bf16") as model:
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, torch_direct(x), rtol=0, atol=5e-2)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_is_the_compiled_thread_count(ir_from_onnx, threads) -> None:
    with OpenVinoModel(str(ir_from_onnx), ModelOptions(threads=threads)) as model:
        assert model.compiled_property("INFERENCE_NUM_THREADS") == threads
        assert str(model.compiled_property("PERFORMANCE_HINT")).endswith("LATENCY")
        assert model.compiled_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_threads_zero_leaves_openvino_its_own_choice(ir_from_onnx) -> None:
    with OpenVinoModel(str(ir_from_onnx), ModelOptions(threads=0)) as model:
        assert 1 <= model.compiled_property("INFERENCE_NUM_THREADS") <= (os.cpu_count() or 1)


# ------------------------------------------------------------------ ONNX bytes and engine_type


def test_from_onnx_bytes(onnx_path) -> None:
    x = inputs(3)
    model = OpenVinoModel.from_onnx_bytes(onnx_path.read_bytes(), ModelOptions(), name="cnn")
    assert not model.loaded and model.path == "cnn"
    with model:
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, ort_direct(onnx_path, x), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("engine", "cls"), [("mklblas", OnnxModel), ("openvino", OpenVinoModel)], ids=["ort", "ov"]
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_engine_type_picks_the_engine(onnx_path, engine, cls, as_bytes) -> None:
    source = onnx_path.read_bytes() if as_bytes else str(onnx_path)
    model = onnx_model(source, ModelOptions(engine_type=engine), name="cnn.onnx")
    assert isinstance(model, cls) and not model.loaded
    x = inputs(3)
    with model:
        assert model.path == ("cnn.onnx" if as_bytes else str(onnx_path))
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, torch_direct(x), rtol=0, atol=ATOL)


def test_unknown_engine_type(onnx_path) -> None:
    with pytest.raises(
        ConfigError, match=r"engine_type: expected one of mklblas, openvino, got 'x'"
    ):
        onnx_model(str(onnx_path), ModelOptions(engine_type="x"))


# ------------------------------------------------------------------ errors


def test_ir_without_bin(ir_from_onnx, tmp_path) -> None:
    xml = tmp_path / "half.xml"
    xml.write_bytes(ir_from_onnx.read_bytes())
    with pytest.raises(IncompleteModelError, match=r"half.xml has no half.bin"):
        OpenVinoModel(str(xml)).load()


def test_bin_of_another_name_when_it_is_the_only_one(ir_from_onnx, tmp_path) -> None:
    """Detection pairs the only .xml with the only .bin; so does the backend."""
    (tmp_path / "model.xml").write_bytes(ir_from_onnx.read_bytes())
    (tmp_path / "weights.bin").write_bytes(ir_from_onnx.with_suffix(".bin").read_bytes())
    x = inputs(2)
    with OpenVinoModel(str(tmp_path / "model.xml")) as model:
        out = model.predict({"input": x})["prob"]
    np.testing.assert_allclose(out, torch_direct(x), rtol=0, atol=ATOL)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        OpenVinoModel(str(tmp_path / "nope.xml")).load()


def test_bytes_that_are_no_model() -> None:
    with pytest.raises(ModelError, match=r"cannot read the ONNX model 'junk' \(9 bytes\)"):
        OpenVinoModel.from_onnx_bytes(b"not onnx!", name="junk").load()
    with pytest.raises(ModelError, match="expected the bytes of a serialized ONNX model"):
        OpenVinoModel.from_onnx_bytes(b"")


def test_missing_input_and_unloaded_model(ir_from_onnx) -> None:
    model = OpenVinoModel(str(ir_from_onnx))
    with pytest.raises(ModelError, match="not loaded"):
        model.predict({"input": inputs(1)})
    with model, pytest.raises(InferenceError, match=r"input 'input' is not in the batch"):
        model.predict({"x": inputs(1)})


def test_bad_precision() -> None:
    with pytest.raises(ConfigError, match=r"expected one of f32, bf16, f16, got 'int3'"):
        OpenVinoModel("m.xml", precision="int3")


def test_without_openvino(ir_from_onnx, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    openvino_ir._core.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'zoo-serving\[openvino\]'"):
            OpenVinoModel(str(ir_from_onnx)).load()
    finally:
        openvino_ir._core.cache_clear()
