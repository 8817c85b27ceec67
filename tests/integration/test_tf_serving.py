"""TensorFlow models served end to end through a real Redis: a frozen NHWC CNN and a two-input,
two-output SavedModel the tests build, and the two shared TF fixtures; every result is compared
with TensorFlow's own output on the same inputs within 1e-5."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from conftest import jpeg
from helpers import assert_top_n
from zoo_serving.backends.base import TensorSpec
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:tensorflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*"),
]

F32 = np.float32
ATOL = 1e-5
H, W = 40, 48  # not square, so a swapped height and width shows
IMAGE_CONFIG = {"data.shape": f"3,{H},{W}"}


def run_frozen(pb: Path, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
    """TensorFlow's own answer: import the GraphDef into a graph and run a v1 Session."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetches, feeds)


class Cnn(tf.Module):
    """A small random-weight NHWC CNN classifier of any image size (softmax out)."""

    def __init__(self, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.k1 = tf.Variable(rng.normal(0, 0.02, (3, 3, 3, 8)).astype(F32))
        self.k2 = tf.Variable(rng.normal(0, 0.1, (3, 3, 8, 16)).astype(F32))
        self.w = tf.Variable(rng.normal(0, 0.3, (16, classes)).astype(F32))
        self.b = tf.Variable(rng.normal(0, 0.1, (classes,)).astype(F32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
    def classify(self, image: Any) -> Any:
        x = tf.nn.relu(tf.nn.conv2d(image, self.k1, 1, "SAME"))
        x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = tf.nn.relu(tf.nn.conv2d(x, self.k2, 1, "SAME"))
        x = tf.reduce_mean(x, axis=[1, 2])
        return tf.nn.softmax(tf.matmul(x, self.w) + self.b, name="prob")


class TwoHeads(tf.Module):
    """Two inputs (a: [N,4], b: [N,3]), two outputs (y: [N,3] float32, z: [N] float32)."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(seed).normal(size=(4, 3)).astype(F32))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="a"),
            tf.TensorSpec([None, 3], tf.float32, name="b"),
        ]
    )
    def heads(self, a: Any, b: Any) -> dict[str, Any]:
        return {"y": tf.tanh(tf.matmul(a, self.w) - b), "z": tf.reduce_max(a, axis=1)}


@pytest.fixture(scope="module")
def frozen_cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN frozen to ``cnn.pb``, no graph_meta.json: input and output found in the graph."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    cnn = Cnn()  # held: the traced method refers to its module weakly
    frozen = convert_variables_to_constants_v2(cnn.classify.get_concrete_function())
    path = tmp_path_factory.mktemp("tf_frozen_cnn") / "cnn.pb"
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    return path.parent


@pytest.fixture(scope="module")
def saved_two_heads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = TwoHeads()
    path = tmp_path_factory.mktemp("tf_saved") / "two_heads"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.heads})
    return path


def decoded_hwc(data: bytes) -> np.ndarray:
    """The image as the server decodes it for an NHWC model of free size: H x W x 3 float32."""
    spec = TensorSpec("image", np.dtype(F32), (None, None, None, 3))
    pre = Preprocessor([spec], (3, H, W), image_layout="HWC")
    return pre.decode(RawInput("image", "image", data), spec)


def test_images_decode_to_hwc_float32_bgr() -> None:
    import cv2

    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    bgr[..., 1] = np.arange(W, dtype=np.uint8)[None, :]  # green varies along the width
    bgr[..., 2] = np.arange(H, dtype=np.uint8)[:, None] * 3  # red varies along the height
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    decoded = decoded_hwc(png.tobytes())
    assert decoded.dtype == F32 and decoded.shape == (H, W, 3)
    np.testing.assert_array_equal(decoded, bgr.astype(F32))  # lossless: exactly BGR, 0-255


def test_frozen_cnn_on_images_matches_tensorflow(frozen_cnn_dir: Path, serve, client) -> None:
    serve(frozen_cnn_dir, **{"data.shape": f"3,{H},{W}", "params.top_n": 0})
    images = [jpeg(seed, height=60, width=50) for seed in range(6)]
    served = client.predict(images, timeout=60)
    batch = np.stack([decoded_hwc(b) for b in images])
    assert batch.shape == (6, H, W, 3)
    [direct] = run_frozen(frozen_cnn_dir / "cnn.pb", {"image:0": batch}, ["Identity:0"])
    assert direct.shape == (6, 10)
    for answer, scores in zip(served, direct):
        assert answer.dtype == scores.dtype and answer.shape == scores.shape
        np.testing.assert_allclose(answer, scores, rtol=0, atol=ATOL)


def test_frozen_cnn_top_n_on_fixture_images(
    frozen_cnn_dir: Path, serve, client, fixtures_dir: Path
) -> None:
    serve(frozen_cnn_dir, **{"data.shape": f"3,{H},{W}", "params.top_n": 3})
    paths = sorted((fixtures_dir / "images").glob("*.jpeg"))
    assert paths
    served = client.predict([str(p) for p in paths], timeout=60)
    batch = np.stack([decoded_hwc(p.read_bytes()) for p in paths])
    [direct] = run_frozen(frozen_cnn_dir / "cnn.pb", {"image:0": batch}, ["Identity:0"])
    for answer, scores in zip(served, direct):
        assert_top_n(answer, scores, 3)


def test_saved_model_two_inputs_two_outputs(saved_two_heads_dir: Path, serve, client) -> None:
    serve(saved_two_heads_dir, **{"data.shape": "4", "params.top_n": 0})
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 4)).astype(F32)
    b = rng.normal(size=(5, 3)).astype(F32)
    served = client.predict([{"a": a[i], "b": b[i]} for i in range(5)], timeout=60)
    fn = tf.saved_model.load(str(saved_two_heads_dir)).signatures["serving_default"]
    direct = {k: v.numpy() for k, v in fn(a=tf.constant(a), b=tf.constant(b)).items()}
    for i, answer in enumerate(served):
        assert sorted(answer) == ["y", "z"]
        for key in ("y", "z"):
            want = direct[key][i]
            assert answer[key].dtype == want.dtype and answer[key].shape == want.shape
            np.testing.assert_allclose(answer[key], want, rtol=0, atol=ATOL)


def test_frozen_dense_fixture(fixtures_dir: Path, serve, client) -> None:
    root = fixtures_dir / "tensorflow" / "frozen_dense"
    meta = json.loads((root / "graph_meta.json").read_text())
    serve(root, **{"data.shape": "4", "params.top_n": 0})
    x = np.random.default_rng(8).normal(size=(6, 4)).astype(F32)
    served = client.predict([row for row in x], timeout=60)
    [direct] = run_frozen(
        root / "frozen_inference_graph.pb", {meta["input_names"][0]: x}, meta["output_names"]
    )
    assert direct.shape == (6, 2)
    for answer, want in zip(served, direct):
        np.testing.assert_allclose(answer, want, rtol=0, atol=ATOL)


def test_saved_model_signature_fixture(fixtures_dir: Path, serve, client) -> None:
    root = fixtures_dir / "tensorflow" / "saved_model_signature"
    serve(root, **{"data.shape": "4", "params.top_n": 5})
    x = np.random.default_rng(9).normal(size=(6, 4)).astype(F32)
    served = client.predict([{"input": row} for row in x], timeout=60)
    fn = tf.saved_model.load(str(root)).signatures["serving_default"]
    direct = fn(input=tf.constant(x))["output"].numpy()
    for answer, scores in zip(served, direct):
        assert_top_n(answer, scores, 5)


class Scales(tf.Module):
    """Two signatures with the same input and output names, giving different answers:
    ``serving_default`` doubles x @ w, ``triple`` triples it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(3).normal(size=(4, 3)).astype(F32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x: Any) -> Any:
        return {"out": 2.0 * tf.matmul(x, self.w)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def triple(self, x: Any) -> Any:
        return {"out": 3.0 * tf.matmul(x, self.w)}


def test_model_signature_from_the_config_picks_what_is_served(serve, client, tmp_path) -> None:
    """``model.signature: triple`` serves that signature, not ``serving_default``: the answers
    are 3 x@w, which the default signature (2 x@w) would not give."""
    module = Scales()
    path = tmp_path / "scales"
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.double, "triple": module.triple}
    )
    serve(path, **{"data.shape": "4", "params.top_n": 0, "model.signature": "triple"})
    x = np.random.default_rng(10).normal(size=(5, 4)).astype(F32)
    served = np.stack(client.predict([{"x": row} for row in x], timeout=60))
    loaded = tf.saved_model.load(str(path)).signatures
    triple = loaded["triple"](x=tf.constant(x))["out"].numpy()
    double = loaded["serving_default"](x=tf.constant(x))["out"].numpy()
    assert not np.allclose(triple, double, atol=1e-3)  # the two really differ
    np.testing.assert_allclose(served, triple, rtol=0, atol=ATOL)
