"""``zoo-serve convert``: Caffe and BigDL models to ONNX files that answer as served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo_serving import load_model


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoo_serving", "convert", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("kind", "shape", "record"), [("caffe", None, (3, 5, 5)), ("bigdl", "1,28,28", (1, 28, 28))]
)
def test_convert_writes_an_onnx_file_that_gives_the_served_answers(
    kind, shape, record, fixtures_dir, tmp_path
) -> None:
    import onnxruntime as ort

    out = tmp_path / f"{kind}.onnx"
    extra = ["--shape", shape] if shape else []
    result = convert(str(fixtures_dir / kind), str(out), *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert "converting" in result.stderr and "layers in" in result.stderr  # the progress line

    x = np.random.default_rng(0).random((2, *record), np.float32)
    with load_model(fixtures_dir / kind, input_shape=record) as model:
        served = next(iter(model.predict({model.inputs[0].name: x}).values()))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    direct = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(direct, served, rtol=0, atol=1e-6)


def test_convert_refuses_other_models_clearly(onnx_model_dir, tmp_path) -> None:
    result = convert(str(onnx_model_dir), str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert result.returncode == 3  # a model error (the exit code table in the README)
    assert "holds a model for the onnx backend" in result.stderr and "Caffe" in result.stderr
