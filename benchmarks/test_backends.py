"""ONNX Runtime (``engine_type: mklblas``) against OpenVINO (``engine_type: openvino``) on one
ONNX CNN, raw throughput at batch 8, measured in the same run.

A ResNet-style CNN (3x224x224 float32, random weights) is exported from torch to ONNX; each
engine gets it through :func:`zoo_serving.backends.onnx_engine.onnx_model` with the options the
server would give it (``params.threads: 0``, all cores), and runs ``Model.predict`` on ready
batches of 8. Engines take turns within each round (the order rotates), so load from elsewhere
on the machine hits them alike; the figure is the median over rounds of openvino / mklblas
records/s. Two OpenVINO variants are reported beside it: ``precision="bf16"`` (OpenVINO's own
default on CPUs with AMX / AVX-512 BF16; not the framework's answers to 1e-4) and the
``THROUGHPUT`` performance hint (several streams, of which one synchronous request uses one).

Nothing about time is asserted. Run::

    .venv/bin/pytest benchmarks/test_backends.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401
import openvino  # noqa: F401
import pytest
import torch

from zoo_serving.backends.base import Model, ModelOptions
from zoo_serving.backends.onnx_engine import onnx_model
from zoo_serving.backends.openvino_ir import OpenVinoModel

SHAPE = (3, 224, 224)
BATCH = 8
BATCHES_PER_SEGMENT = 12
ROUNDS = 7
SEED = 1234

pytestmark = pytest.mark.timeout(300)


class ThroughputHintModel(OpenVinoModel):
    """OpenVINO with the THROUGHPUT hint, for comparison only."""

    performance_hint = "THROUGHPUT"


def resnet_cnn() -> Any:
    """A ResNet-style CNN: 7x7 stem, four stages of one basic block (32..256 channels)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(3, 32, 7, 2, 3, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Block(32, 32, 1),
        Block(32, 64, 2),
        Block(64, 128, 2),
        Block(128, 256, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 1000),
        nn.Softmax(dim=1),
    ).eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's notes
        torch.onnx.export(
            resnet_cnn(),
            (torch.zeros(1, *SHAPE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["prob"],
            dynamic_axes={"input": {0: "N"}, "prob": {0: "N"}},
            opset_version=17,
        )
    return path


def segment(model: Model, batch: dict[str, np.ndarray]) -> float:
    """Records/s of ``BATCHES_PER_SEGMENT`` predicts on a ready batch."""
    start = time.perf_counter()
    for _ in range(BATCHES_PER_SEGMENT):
        model.predict(batch)
    return BATCHES_PER_SEGMENT * BATCH / (time.perf_counter() - start)


def test_mklblas_vs_openvino_batch8(benchmark: Any, onnx_path: Path) -> None:
    """Raw records/s at batch 8: openvino / mklblas, both f32 with all cores."""
    options = ModelOptions(threads=0, batch_size=BATCH, input_shape=SHAPE)
    engines: dict[str, Callable[[], Model]] = {
        "mklblas": lambda: onnx_model(str(onnx_path), options),
        "openvino": lambda: onnx_model(str(onnx_path), replace(options, engine_type="openvino")),
        "openvino-bf16": lambda: OpenVinoModel(str(onnx_path), options, precision="bf16"),
        "openvino-throughput-hint": lambda: ThroughputHintModel(str(onnx_path), options),
    }
    models = {name: make().load() for name, make in engines.items()}
    assert type(models["openvino"]) is OpenVinoModel
    x = np.random.default_rng(SEED).standard_normal((BATCH, *SHAPE), dtype=np.float32)
    batch = {"input": x}
    try:
        answers = {name: m.predict(batch)["prob"] for name, m in models.items()}  # warm-up too
        np.testing.assert_allclose(answers["openvino"], answers["mklblas"], rtol=0, atol=1e-4)
        rates: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)

        def one_round() -> None:
            turn = len(rates["mklblas"])
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                rates[name].append(segment(models[name], batch))

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    finally:
        for m in models.values():
            m.close()

    def ratios(name: str) -> list[float]:
        return [a / b for a, b in zip(rates[name], rates["mklblas"])]

    median = {name: statistics.median(r) for name, r in rates.items()}
    ratio = statistics.median(ratios("openvino"))
    benchmark.extra_info.update(
        shape=list(SHAPE),
        batch_size=BATCH,
        records_per_s={name: round(v, 1) for name, v in median.items()},
        ratio=round(ratio, 3),
        ratios=[round(r, 3) for r in ratios("openvino")],
        bf16_ratio=round(statistics.median(ratios("openvino-bf16")), 3),
        throughput_hint_ratio=round(statistics.median(ratios("openvino-throughput-hint")), 3),
        max_abs_diff_bf16=float(np.abs(answers["openvino-bf16"] - answers["mklblas"]).max()),
    )
    print(  # the benchmark's report, shown with -s
        f"\nresnet-style CNN {'x'.join(map(str, SHAPE))} batch {BATCH}, raw records/s "
        f"(median of {len(rates['mklblas'])} rounds): "
        + ", ".join(f"{name} {v:.1f}" for name, v in median.items())
        + f"\nopenvino / mklblas = {ratio:.2f} (per round: "
        + ", ".join(f"{r:.2f}" for r in ratios("openvino"))
        + f"); bf16 / mklblas = {benchmark.extra_info['bf16_ratio']:.2f}; "
        f"throughput hint / mklblas = {benchmark.extra_info['throughput_hint_ratio']:.2f}"
    )
