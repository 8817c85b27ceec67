"""A benchmark per backend: served ÷ raw throughput at batch 8, measured in the same run.

Five backends serve the same small CNN (3x32x32 float32 -> three 3x3 conv layers of 32-64-64
channels -> 10-class softmax; random weights, seed 0), each in its own framework's format:

- ``onnx``: exported from torch (ONNX Runtime);
- ``torch``: traced to TorchScript;
- ``openvino``: an IR converted from the ONNX file (``compress_to_fp16=False``);
- ``tensorflow``: a tf.function over the torch weights (NCHW in, NHWC inside), a SavedModel;
- ``caffe``: a prototxt + caffemodel over the torch weights (converted to ONNX on load).

Every model's raw answers are checked against torch's on the same batch before it is timed.
``bigdl`` serves the shared fixture LeNet (1x28x28, 5 classes of log-probabilities), skipped
when ``../shared/fixtures`` is not beside the checkout. LeNet costs next to nothing (tens of
thousands of records/s raw), so its served figure is the ceiling of the serving path for small
records and its ratio is there for scale, like ``test_linear_end_to_end``.

For each backend, as in ``test_throughput.py``: **raw** is records/s of ``Model.predict`` on
ready batches of 8 in this process, **served** is records/s through :class:`zoo_serving.Server`
(threads runner, ``batch_size: 8``) with a client in another process that enqueues a round's
records and waits for every result. Raw segments and served rounds alternate; the figure is the
median over rounds of served / the mean of the raw segments either side. Every result is
checked to arrive, and a few against the raw model's top-5. Nothing about time is asserted.

Run::

    .venv/bin/pytest benchmarks/test_backend_serving.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo_serving
from conftest import export_onnx
from test_throughput import TOP_N, ClientJob, ClientProcess, ForeignCpu, Rounds
from zoo_serving import Server
from zoo_serving.broker.embedded import ManagedRedis

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SHAPE = (3, 32, 32)
CLASSES = 10
BATCH = 8
RECORDS = 1200  # per served round
RAW_BATCHES = 120  # per raw segment: 0.1-0.5 s of the CNN
ROUNDS = 5
SEED = 0
ATOL = 1e-4

pytestmark = [
    pytest.mark.timeout(300),
    # TensorFlow's own deprecation notices on import and SavedModel save/load
    pytest.mark.filterwarnings("ignore::DeprecationWarning:tensorflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*"),
]


# ------------------------------------------------------------------ the CNN, per framework


def _torch_cnn() -> Any:
    """3x32x32 -> conv 32, pool, conv 64, pool, conv 64, global average, Linear 10, softmax."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, CLASSES),
        nn.Softmax(dim=1),
    ).eval()


@dataclass(frozen=True)
class Cnn:
    """The torch CNN, its weights as NumPy (conv1..3, fc: weight, bias) and a checked batch."""

    module: Any
    weights: dict[str, tuple[np.ndarray, np.ndarray]]
    batch: np.ndarray
    expected: np.ndarray


@pytest.fixture(scope="session")
def cnn() -> Cnn:
    import torch

    module = _torch_cnn()
    names = {0: "conv1", 3: "conv2", 6: "conv3", 10: "fc"}
    weights = {
        name: (module[i].weight.detach().numpy().copy(), module[i].bias.detach().numpy().copy())
        for i, name in names.items()
    }
    batch = np.random.default_rng(SEED).standard_normal((BATCH, *SHAPE), dtype=np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch)).numpy()
    return Cnn(module, weights, batch, expected)


@pytest.fixture(scope="session")
def onnx_dir(cnn: Cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(cnn.module, SHAPE, tmp_path_factory.mktemp("cnn-onnx") / "cnn.onnx")


@pytest.fixture(scope="session")
def torch_dir(cnn: Cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("cnn-torch") / "cnn.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes
        torch.jit.save(torch.jit.trace(cnn.module, torch.zeros(1, *SHAPE)), str(path))
    return path.parent


@pytest.fixture(scope="session")
def openvino_dir(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import openvino as ov

    path = tmp_path_factory.mktemp("cnn-openvino") / "cnn.xml"
    ov.save_model(ov.convert_model(str(onnx_dir / "cnn.onnx")), str(path), compress_to_fp16=False)
    return path.parent


@pytest.fixture(scope="session")
def tensorflow_dir(cnn: Cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN as a Keras-free tf.function over the torch weights, saved as a SavedModel."""
    import tensorflow as tf

    class TfCnn(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = [
                (
                    tf.Variable(w.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
                    tf.Variable(b),
                )
                for w, b in (cnn.weights[f"conv{i}"] for i in (1, 2, 3))
            ]
            w, b = cnn.weights["fc"]
            self.fc = (tf.Variable(w.T.copy()), tf.Variable(b))

        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="input")])
        def serve(self, x: Any) -> dict[str, Any]:
            y = tf.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC, the layout TF's CPU kernels take
            for i, (w, b) in enumerate(self.convs):
                y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(y, w, 1, "SAME"), b))
                if i < 2:
                    y = tf.nn.max_pool2d(y, 2, 2, "VALID")
            y = tf.reduce_mean(y, axis=(1, 2))
            return {"prob": tf.nn.softmax(tf.matmul(y, self.fc[0]) + self.fc[1])}

    module = TfCnn()
    path = tmp_path_factory.mktemp("cnn-tensorflow") / "saved"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


CAFFE_NET = """name: "cnn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "pool1" type: "Pooling" bottom: "c1" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "p1" top: "c2"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "pool2" type: "Pooling" bottom: "c2" top: "p2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "p2" top: "c3"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "c3" top: "c3" }
layer { name: "gap" type: "Pooling" bottom: "c3" top: "g"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "g" top: "logits"
        inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
"""


@pytest.fixture(scope="session")
def caffe_dir(cnn: Cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN as a prototxt and a caffemodel whose blobs are the torch weights (the
    ``save_net`` approach of ``tests/unit/test_caffe.py``)."""
    from google.protobuf import text_format

    from zoo_serving.backends.caffe import caffe_pb2

    directory = tmp_path_factory.mktemp("cnn-caffe")
    net = text_format.Parse(CAFFE_NET, caffe_pb2.NetParameter())
    for layer in net.layer:
        for array in cnn.weights.get(layer.name, ()):
            blob = layer.blobs.add(data=array.astype(np.float32).ravel().tolist())
            blob.shape.dim.extend(array.shape)
    (directory / "cnn.prototxt").write_text(CAFFE_NET)
    (directory / "cnn.caffemodel").write_bytes(net.SerializeToString())
    return directory


@pytest.fixture(scope="session")
def bigdl_dir() -> Path:
    lenet = FIXTURES / "bigdl" / "bigdl_lenet.model"
    if not lenet.is_file():
        pytest.skip(f"BigDL fixture not found at {lenet} (they live beside the checkout)")
    return lenet.parent


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    fixture: str
    label: str
    shape: tuple[int, ...] = SHAPE
    same_cnn: bool = True  # answers checked against torch's on the same batch
    raw_batches: int = RAW_BATCHES
    options: dict[str, Any] = field(default_factory=dict)


CASES = {
    "onnx": Case("onnx_dir", "CNN 3x32x32 (ONNX Runtime)"),
    "torch": Case("torch_dir", "CNN 3x32x32 (TorchScript)"),
    "tensorflow": Case("tensorflow_dir", "CNN 3x32x32 (SavedModel)"),
    "openvino": Case("openvino_dir", "CNN 3x32x32 (IR, f32)"),
    "caffe": Case("caffe_dir", "CNN 3x32x32 (prototxt -> ONNX)"),
    "bigdl": Case(
        "bigdl_dir", "LeNet 1x28x28 (fixture)", (1, 28, 28), same_cnn=False, raw_batches=2000
    ),
}


@pytest.mark.parametrize("backend", list(CASES))
def test_served_over_raw_batch8(
    backend: str,
    benchmark: Any,
    request: pytest.FixtureRequest,
    redis: ManagedRedis,
    tmp_path: Path,
    report_line: Callable[[str], None],
) -> None:
    """served / raw records/s at batch 8 for one backend; only correctness is asserted."""
    case = CASES[backend]
    model_dir: Path = request.getfixturevalue(case.fixture)
    shape_text = ",".join(map(str, case.shape))
    stream = f"bench-{backend}-{uuid.uuid4().hex[:8]}"
    config = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis.url, "stream": stream, "shape": shape_text},
        "params": {"batch_size": BATCH, "top_n": TOP_N, "max_wait_ms": 5, "runner": "threads"},
        "log": {"dir": str(tmp_path / "work")},
    }
    job = ClientJob(
        url=redis.url,
        stream=stream,
        shape=case.shape,
        records=RECORDS,
        chunk=50,
        spot=(0, 1, RECORDS // 2, RECORDS - 1),
    )
    with zoo_serving.load_model(model_dir, input_shape=case.shape) as model:
        assert model.backend == backend
        if case.same_cnn:
            cnn: Cnn = request.getfixturevalue("cnn")
            out = model.predict({model.inputs[0].name: cnn.batch})[model.outputs[0].name]
            np.testing.assert_allclose(out, cnn.expected, rtol=0, atol=ATOL)
        with Server(config):
            client = ClientProcess(job)
            try:
                client.wait_ready()
                warm = client.run_round()  # untimed: the served model's first batches, caches
                assert warm["received"] == RECORDS and not warm["errors"], warm["errors"]
                assert redis.process is not None
                meter = ForeignCpu([os.getpid(), client.process.pid, redis.process.pid])
                run = Rounds(model, client, meter, case.shape, BATCH, case.raw_batches)
                benchmark.pedantic(run.served_round, setup=run.raw_segment, rounds=ROUNDS)
                run.raw_segment()
                run.check()  # every result of every round arrived, a few match the model
            finally:
                client.close()
    figures = run.figures()
    benchmark.extra_info.update(
        backend=backend,
        model=case.label,
        raw_records_per_s=round(figures.raw, 2),
        served_records_per_s=round(figures.served, 2),
        ratio=round(figures.ratio, 4),
        ratios=[round(r, 4) for r in figures.ratios],
        foreign_cpu=[round(f, 3) for f in figures.foreign],
        clean_rounds=figures.clean,
        batch_size=BATCH,
        records_per_round=RECORDS,
    )
    report_line(figures.line(f"{backend:<10} {case.label:<31}"))
