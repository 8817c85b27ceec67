"""``zoo-serve demo``: build a small CNN, serve it on the embedded Redis, classify images.

The model is a tiny ONNX colour classifier built on the spot (no weights can be downloaded
here); the demo shows the whole path a real model takes and checks every served answer against
ONNX Runtime run directly on the same input.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..broker.embedded import free_port, port_answers
from ..client import InputQueue
from ..server import Server

LABELS = ["red", "orange", "yellow", "green", "cyan", "blue", "violet", "grey", "black", "white"]
SIZE = 64


# prototype colours of the classes, BGR in 0..1 (OpenCV decodes to BGR)
PROTOTYPES = np.array(
    [
        [0.1, 0.1, 0.9],
        [0.1, 0.55, 0.95],
        [0.1, 0.9, 0.9],
        [0.1, 0.8, 0.1],
        [0.9, 0.9, 0.1],
        [0.9, 0.2, 0.1],
        [0.8, 0.2, 0.6],
        [0.5, 0.5, 0.5],
        [0.05, 0.05, 0.05],
        [0.95, 0.95, 0.95],
    ],
    np.float32,
)


def build_demo_model(path: Path, sharpness: float = 20.0) -> Path:
    """Write a small NCHW float32 colour classifier (softmax output) to ``path`` as ONNX.

    It scores each class by how close the image's mean colour is to the class's prototype
    colour: ``-|mean - proto|^2`` up to a constant, i.e. a linear layer over the pooled image.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes = len(PROTOTYPES)
    weight = (2 * sharpness * PROTOTYPES.T).astype(np.float32)  # (3, classes)
    bias = (-sharpness * (PROTOTYPES**2).sum(axis=1)).astype(np.float32)
    scale = np.array([1 / 255.0], np.float32)
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["x0"]),
        helper.make_node("GlobalAveragePool", ["x0"], ["x1"]),
        helper.make_node("Flatten", ["x1"], ["x2"]),
        helper.make_node("Gemm", ["x2", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo_serving_demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((weight, "weight"), (bias, "bias"), (scale, "scale"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def draw_images(folder: Path) -> list[Path]:
    """A few JPEGs of coloured shapes, so the demo needs no files."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    shapes = [
        ("red-circle", (40, 40, 220)),
        ("green-square", (40, 190, 40)),
        ("blue-triangle", (220, 60, 30)),
    ]
    paths = []
    for i, (name, bgr) in enumerate(shapes):
        img = np.empty((120, 160, 3), np.uint8)
        img[:] = bgr
        bgr = (int(bgr[0] * 0.7), int(bgr[1] * 0.7), int(bgr[2] * 0.7))
        if i == 0:
            cv2.circle(img, (80, 60), 40, bgr, -1)
        elif i == 1:
            cv2.rectangle(img, (40, 20), (120, 100), bgr, -1)
        else:
            pts = np.array([[80, 15], [130, 105], [30, 105]], np.int32)
            cv2.fillPoly(img, [pts], bgr)
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def direct_top_n(session: Any, image: bytes, n: int) -> list[list[float]]:
    """Top-n of an ONNX Runtime ``session`` run directly on the image, preprocessed as the
    server does."""
    from ..backends.base import TensorSpec
    from ..serving.preprocess import Preprocessor
    from ..wire.native import RawInput

    spec = TensorSpec("input", np.dtype(np.float32), (None, 3, SIZE, SIZE))
    x = Preprocessor([spec], (3, SIZE, SIZE)).decode(RawInput("input", "image", image), spec)
    prob = session.run(None, {"input": x[None]})[0][0]
    order = np.argsort(-prob, kind="stable")[:n]
    return [[int(i), float(prob[i])] for i in order]


def run_demo(
    images: list[str], work_dir: str | None = None, top_n: int = 3, out: TextIO | None = None
) -> int:
    """Serve the demo model and write the top-N of each image to ``out`` (stdout); 0 when
    every answer matched."""
    import onnxruntime as ort

    def say(line: str) -> None:
        (out or sys.stdout).write(line + "\n")

    root = Path(work_dir or tempfile.mkdtemp(prefix="zoo-serving-demo-"))
    model_path = build_demo_model(root / "model" / "demo.onnx")
    paths = [Path(p) for p in images] or draw_images(root / "images")
    # a Redis of its own: on 6379 when that is free, else on a free port (never another's)
    port = free_port() if port_answers("localhost", 6379) else 6379
    config = {
        "model": {"path": str(model_path.parent)},
        "data": {"shape": f"3,{SIZE},{SIZE}", "stream": "demo_stream", "embedded_port": port},
        "params": {"batch_size": 4, "top_n": top_n},
        "log": {"dir": str(root / "work")},
    }
    say(f"serving {model_path} (a tiny colour classifier)")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    mismatches = 0
    with Server(config) as server:
        embedded = server.embedded is not None
        where = "embedded redis-server" if embedded else "redis"
        say(f"server ready on {where} at {server.url}, stream demo_stream")
        with InputQueue(url=server.url, name="demo_stream") as client:
            for path in paths:
                data = path.read_bytes()
                served = client.predict(data, timeout=30)
                direct = direct_top_n(session, data, top_n)
                same = [i for i, _ in served] == [i for i, _ in direct] and np.allclose(
                    [p for _, p in served], [p for _, p in direct], atol=1e-5
                )
                mismatches += not same
                answer = ", ".join(f"{LABELS[i]} ({i}) {p:.3f}" for i, p in served)
                verdict = "matches" if same else "DIFFERS FROM"
                say(f"{path.name}: {answer}  [{verdict} onnxruntime]")
    say("server stopped" + (", embedded redis-server stopped" if embedded else ""))
    return 1 if mismatches else 0
