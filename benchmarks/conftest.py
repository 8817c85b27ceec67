"""Fixtures of the throughput benchmarks: a real redis-server, and models built with torch and
exported to ONNX once per session.

Self-contained: nothing here comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zoo_serving.broker.connection import connect
from zoo_serving.broker.embedded import ManagedRedis, free_port

SEED = 0


# ------------------------------------------------------------------ Redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedRedis]:
    """A redis-server on a free loopback port, for the whole session."""
    with ManagedRedis(tmp_path_factory.mktemp("redis"), port=free_port()) as server:
        yield server


@pytest.fixture
def redis(redis_server: ManagedRedis) -> Iterator[ManagedRedis]:
    """The session's redis-server; its keyspace is emptied after each benchmark."""
    yield redis_server
    client = connect(url=redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()


# ------------------------------------------------------------------ models


def _resnet18() -> Any:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2], 64-128-256-512 channels, 1000 classes) + softmax,
    in plain torch.nn since torchvision is not installed."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.downsample(x))

    class ResNet18(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            blocks: list[nn.Module] = []
            cin = 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.layers(self.stem(x))).flatten(1)
            return torch.softmax(self.fc(x), dim=1)

    return ResNet18()


def _linear() -> Any:
    """The no-op-ish model: 1,000 floats -> Linear(1000, 1000) -> softmax."""
    from torch import nn

    return nn.Sequential(nn.Linear(1000, 1000), nn.Softmax(dim=1))


def export_onnx(module: Any, record_shape: tuple[int, ...], path: Path) -> Path:
    """Export ``module`` (eval mode) with a free batch dimension; input "input", output
    "output"."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, *record_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=17,
        )
    return path.parent


@pytest.fixture(scope="session")
def resnet18_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding a ResNet-18-sized CNN as ONNX (input N x 3 x 224 x 224)."""
    import torch

    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("resnet18") / "model.onnx"
    return export_onnx(_resnet18(), (3, 224, 224), path)


@pytest.fixture(scope="session")
def linear_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding the 1,000-float Linear + softmax model as ONNX."""
    import torch

    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("linear") / "model.onnx"
    return export_onnx(_linear(), (1000,), path)


@pytest.fixture(scope="session")
def noop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding the no-op model: ONNX ``Identity`` on N x 1,000 floats (input
    "input", output "output"), built with onnx.helper; its top-5 is the record's own."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "noop",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1000])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("noop") / "model.onnx"
    onnx.save(model, str(path))
    return path.parent


# ------------------------------------------------------------------ summary


_REPORT_KEY = pytest.StashKey[list[str]]()


@pytest.fixture
def report_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a result line now and repeat it in the terminal summary."""
    lines = request.config.stash.setdefault(_REPORT_KEY, [])

    def add(line: str) -> None:
        print(f"\n{line}")
        lines.append(line)

    return add


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT_KEY, [])
    if lines:
        terminalreporter.section("zoo_serving throughput")
        for line in lines:
            terminalreporter.write_line(line)
