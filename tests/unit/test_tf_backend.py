"""The TensorFlow backend without Redis: frozen graphs and SavedModels the tests build, and the
shared fixtures, each compared with TensorFlow run directly on the same inputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from zoo_serving.backends import ModelOptions, detect_model, load_model
from zoo_serving.backends.tf_graph import TensorFlowModel
from zoo_serving.errors import (
    AmbiguousModelError,
    InferenceError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:tensorflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*"),
]

F32 = np.float32
ATOL = 1e-5


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def freeze(fn: Any, path: Path, meta: dict[str, Any] | None = None) -> Path:
    """Freeze a tf.function's concrete function into ``path`` (+ graph_meta.json)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    if meta is not None:
        (path.parent / "graph_meta.json").write_text(json.dumps(meta))
    return path


def run_frozen(pb: Path, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
    """TensorFlow's own answer: import the GraphDef into a graph and run a v1 Session."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetches, feeds)


class TwoHeads(tf.Module):
    """Two inputs (a: [N,4], b: [N,3]), two outputs (y: [N,3], z: [N])."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.w = tf.Variable(_rng(seed).normal(size=(4, 3)).astype(F32))

    @tf.function(
        input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 3], tf.float32)]
    )
    def heads(self, a: Any, b: Any) -> dict[str, Any]:
        return {"y": tf.nn.relu(tf.matmul(a, self.w) + b), "z": tf.reduce_sum(a * a, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def double(self, a: Any) -> dict[str, Any]:
        return {"twice": 2.0 * tf.matmul(a, self.w)}


@pytest.fixture(scope="module")
def two_heads() -> TwoHeads:
    return TwoHeads()


@pytest.fixture(scope="module")
def frozen_dir(tmp_path_factory: pytest.TempPathFactory, two_heads: TwoHeads) -> Path:
    """A frozen two-input, two-output graph without graph_meta.json."""
    return freeze(two_heads.heads, tmp_path_factory.mktemp("frozen") / "graph.pb").parent


@pytest.fixture(scope="module")
def frozen_meta_dir(tmp_path_factory: pytest.TempPathFactory, two_heads: TwoHeads) -> Path:
    """The same graph with graph_meta.json naming b, a as inputs and only z as output."""
    meta = {"input_names": ["b:0", "a"], "output_names": ["Identity_1:0"], "other": [1]}
    pb = tmp_path_factory.mktemp("frozen_meta") / "graph.pb"
    return freeze(two_heads.heads, pb, meta).parent


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory, two_heads: TwoHeads) -> Path:
    """A SavedModel with two signatures: serving_default (heads) and double."""
    path = tmp_path_factory.mktemp("saved") / "model"
    tf.saved_model.save(
        two_heads,
        str(path),
        signatures={"serving_default": two_heads.heads, "double": two_heads.double},
    )
    return path


@pytest.fixture(scope="module")
def one_signature_dir(tmp_path_factory: pytest.TempPathFactory, two_heads: TwoHeads) -> Path:
    path = tmp_path_factory.mktemp("saved_one") / "model"
    tf.saved_model.save(two_heads, str(path), signatures={"only_one": two_heads.double})
    return path


def _ab(n: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    return rng.normal(size=(n, 4)).astype(F32), rng.normal(size=(n, 3)).astype(F32)


# ------------------------------------------------------------------ frozen graphs


def test_frozen_graph_without_meta_uses_placeholders_and_sink_ops(frozen_dir: Path) -> None:
    with TensorFlowModel(str(frozen_dir / "graph.pb")) as model:
        assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [
            ("a:0", np.dtype(F32), (None, 4)),
            ("b:0", np.dtype(F32), (None, 3)),
        ]
        assert [(s.name, s.shape) for s in model.outputs] == [
            ("Identity:0", (None, 3)),
            ("Identity_1:0", (None,)),
        ]
        a, b = _ab()
        got = model.predict({"a:0": a, "b": b})  # with or without the :0
    want = run_frozen(frozen_dir / "graph.pb", {"a:0": a, "b:0": b}, ["Identity:0", "Identity_1:0"])
    assert list(got) == ["Identity:0", "Identity_1:0"]
    for g, w in zip(got.values(), want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)


def test_frozen_graph_with_meta_uses_its_names_and_order(frozen_meta_dir: Path) -> None:
    layout = detect_model(frozen_meta_dir)
    assert (layout.backend, layout.kind) == ("tensorflow", "frozen")
    model = load_model(frozen_meta_dir, backend="zoo_serving.backends.tf_graph:TensorFlowModel")
    try:
        assert [s.name for s in model.inputs] == ["b:0", "a"]
        assert [s.name for s in model.outputs] == ["Identity_1:0"]
        a, b = _ab(3, seed=2)
        got = model.predict({"a": a, "b:0": b})
        model.warmup(2)
    finally:
        model.close()
    [want] = run_frozen(frozen_meta_dir / "graph.pb", {"a:0": a, "b:0": b}, ["Identity_1:0"])
    np.testing.assert_allclose(got["Identity_1:0"], want, rtol=0, atol=ATOL)


def test_frozen_fixture_matches_tensorflow(fixtures_dir: Path) -> None:
    root = fixtures_dir / "tensorflow" / "frozen_dense"
    pb = root / "frozen_inference_graph.pb"
    meta = json.loads((root / "graph_meta.json").read_text())
    x = _rng(3).normal(size=(7, 4)).astype(F32)
    with TensorFlowModel(str(pb)) as model:
        assert [s.name for s in model.inputs] == meta["input_names"] == ["Placeholder:0"]
        assert [s.name for s in model.outputs] == meta["output_names"]
        assert model.inputs[0].shape == (None, 4) and model.outputs[0].shape == (None, 2)
        got = model.predict({"Placeholder:0": x})
    [want] = run_frozen(pb, {"Placeholder:0": x}, meta["output_names"])
    np.testing.assert_allclose(got["dense_1/Sigmoid:0"], want, rtol=0, atol=ATOL)


def test_frozen_graph_meta_naming_a_missing_tensor(tmp_path: Path, two_heads: TwoHeads) -> None:
    freeze(two_heads.heads, tmp_path / "g.pb", {"input_names": ["nope:0"]})
    with pytest.raises(ModelError, match=r"'nope:0' is not in the graph.*placeholders are a:0"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not readable JSON"),
        ('{"input_names": "a:0"}', "input_names must be a list"),
        ("[1]", "expected a JSON object"),
    ],
)
def test_bad_graph_meta(tmp_path: Path, two_heads: TwoHeads, text: str, match: str) -> None:
    freeze(two_heads.heads, tmp_path / "g.pb")
    (tmp_path / "graph_meta.json").write_text(text)
    with pytest.raises(ModelError, match=match):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_not_a_graph_def(tmp_path: Path) -> None:
    (tmp_path / "junk.pb").write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(ModelError, match="is not a TensorFlow GraphDef"):
        TensorFlowModel(str(tmp_path / "junk.pb")).load()


def test_unfrozen_graph_is_refused(tmp_path: Path) -> None:
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        v = tf.compat.v1.Variable(tf.ones([2, 2]), use_resource=False, name="v")
        tf.identity(tf.matmul(x, v), name="out")
    (tmp_path / "g.pb").write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(UnsupportedModelError, match=r"is not frozen.*\['v'\]"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_missing_input_in_batch_names_what_the_model_takes(frozen_dir: Path) -> None:
    model = TensorFlowModel(str(frozen_dir)).load()  # the directory works too
    with pytest.raises(InferenceError, match=r"no input 'b:0'.*takes 'a:0', 'b:0', got 'a'"):
        model.predict({"a": _ab()[0]})


def test_unknown_rank_input_takes_data_shape_channels_last(tmp_path: Path) -> None:
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def scale(x: Any) -> Any:
        return x * 3.0

    freeze(scale, tmp_path / "g.pb")
    options = ModelOptions(input_shape=(3, 8, 6))
    with TensorFlowModel(str(tmp_path / "g.pb"), options) as model:
        assert model.inputs[0].shape == (None, 8, 6, 3)
        x = np.ones((2, 8, 6, 3), F32)
        np.testing.assert_array_equal(model.predict({"x": x})["Identity:0"], 3 * x)


def test_an_output_of_unknown_rank_fits_any_shape(tmp_path: Path) -> None:
    # the batch core checks outputs against their description; unknown rank describes none
    from zoo_serving.serving.batch import BatchCore

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def scale(x: Any) -> Any:
        return x * 3.0

    freeze(scale, tmp_path / "g.pb")
    with TensorFlowModel(str(tmp_path / "g.pb"), ModelOptions(input_shape=(3, 8, 6))) as model:
        assert not model.outputs[0].ranked
        x = np.ones((8, 6, 3), F32)
        out = BatchCore(model, top_n=0).predict([{"x": x}, {"x": 2 * x}])
        np.testing.assert_array_equal(out["Identity:0"], np.stack([3 * x, 6 * x]))


def test_outputs_that_need_an_input_not_named(tmp_path: Path, two_heads: TwoHeads) -> None:
    freeze(two_heads.heads, tmp_path / "g.pb", {"input_names": ["a:0"]})
    with pytest.raises(ModelError, match=r"outputs \['Identity:0', .* from inputs \['a:0'\]"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_graph_without_placeholders(tmp_path: Path) -> None:
    @tf.function(input_signature=[])
    def constant() -> Any:
        return tf.ones([2, 2])

    freeze(constant, tmp_path / "g.pb")
    with pytest.raises(ModelError, match=r"found inputs \[\] and outputs .*graph_meta.json"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_unknown_op_does_not_import(tmp_path: Path) -> None:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.add(op="NoSuchOp", name="x")
    (tmp_path / "g.pb").write_bytes(graph_def.SerializeToString())
    with pytest.raises(ModelError, match="does not import.*NoSuchOp"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_string_input_is_unsupported(tmp_path: Path) -> None:
    with tf.Graph().as_default() as graph:
        text = tf.compat.v1.placeholder(tf.string, [None], name="text")
        tf.strings.length(text, name="n")
    (tmp_path / "g.pb").write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(UnsupportedModelError, match="input 'text:0' has dtype string"):
        TensorFlowModel(str(tmp_path / "g.pb")).load()


def test_directory_with_two_graphs_or_none(tmp_path: Path, two_heads: TwoHeads) -> None:
    freeze(two_heads.heads, tmp_path / "one.pb")
    freeze(two_heads.heads, tmp_path / "two.pb")
    (tmp_path / "variables_only").mkdir()
    with pytest.raises(AmbiguousModelError, match=r"expected one frozen \*.pb, found one.pb, two"):
        TensorFlowModel(str(tmp_path)).load()
    with pytest.raises(ModelNotFoundError, match=r"expected one frozen \*.pb, found none"):
        TensorFlowModel(str(tmp_path / "variables_only")).load()


def test_free_image_size_warms_up_at_data_shape(tmp_path: Path) -> None:
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def pool(x: Any) -> Any:
        return tf.reduce_mean(tf.nn.max_pool2d(x, 4, 4, "VALID"), axis=[1, 2])

    freeze(pool, tmp_path / "g.pb")
    options = ModelOptions(input_shape=(3, 8, 12), batch_size=2)
    with TensorFlowModel(str(tmp_path / "g.pb"), options) as model:
        model.warmup()  # a 1x1 image would fail the 4x4 pooling


def test_threads_cannot_change_once_tensorflow_runs(
    frozen_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = tf.config.threading.get_intra_op_parallelism_threads()
    with caplog.at_level(logging.WARNING, "zoo_serving"):
        TensorFlowModel(str(frozen_dir), ModelOptions(threads=current + 3)).load().close()
    assert f"params.threads={current + 3} not applied" in caplog.text


def test_threads_apply_in_a_fresh_process(frozen_dir: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, tensorflow as tf\n"
        "from zoo_serving.backends import ModelOptions\n"
        "from zoo_serving.backends.tf_graph import TensorFlowModel\n"
        "TensorFlowModel(sys.argv[1], ModelOptions(threads=3)).load().warmup(1)\n"
        "t = tf.config.threading\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(frozen_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    assert out.stdout.split() == ["3", "1"]


def test_missing_tensorflow(frozen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zoo-serving\[tf\]'"):
        TensorFlowModel(str(frozen_dir)).load()


# ------------------------------------------------------------------ SavedModels


def test_tf2_saved_model_is_detected(saved_dir: Path) -> None:
    layout = detect_model(saved_dir)
    assert (layout.backend, layout.kind, layout.main.name) == (
        "tensorflow",
        "savedmodel",
        "saved_model.pb",
    )


def test_saved_model_two_inputs_two_outputs(saved_dir: Path, two_heads: TwoHeads) -> None:
    with TensorFlowModel(str(saved_dir / "saved_model.pb")) as model:
        assert model.backend == "tensorflow" and model.image_layout == "HWC"
        assert [(s.name, s.shape) for s in model.inputs] == [("a", (None, 4)), ("b", (None, 3))]
        assert [(s.name, s.shape) for s in model.outputs] == [("y", (None, 3)), ("z", (None,))]
        a, b = _ab(6, seed=4)
        got = model.predict({"b": b, "a": a})
        model.warmup()
    direct = tf.saved_model.load(str(saved_dir)).signatures["serving_default"]
    want = {k: v.numpy() for k, v in direct(a=tf.constant(a), b=tf.constant(b)).items()}
    assert list(got) == ["y", "z"]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=ATOL)


def test_saved_model_signature_from_options(saved_dir: Path) -> None:
    options = ModelOptions(signature="double")
    with TensorFlowModel(str(saved_dir / "saved_model.pb"), options) as model:
        assert [s.name for s in model.inputs] == ["a"]
        assert [s.name for s in model.outputs] == ["twice"]
        a = _ab(2, seed=5)[0]
        got = model.predict({"a": a})["twice"]
    direct = tf.saved_model.load(str(saved_dir)).signatures["double"]
    np.testing.assert_allclose(got, direct(a=tf.constant(a))["twice"].numpy(), rtol=0, atol=ATOL)


def test_missing_signature_lists_the_available_ones(saved_dir: Path) -> None:
    options = ModelOptions(signature="predict")
    with pytest.raises(ModelError, match=r"no signature 'predict'; available: 'double', 'serv"):
        TensorFlowModel(str(saved_dir), options).load()


def test_only_signature_serves_when_the_default_is_absent(
    one_signature_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "zoo_serving"):
        model = TensorFlowModel(str(one_signature_dir)).load()
    assert [s.name for s in model.outputs] == ["twice"]
    assert "serving its only one" in caplog.text
    with pytest.raises(ModelError, match="no signature 'other'; available: 'only_one'"):
        TensorFlowModel(str(one_signature_dir), ModelOptions(signature="other")).load()


def test_saved_model_fixture_matches_tensorflow(
    fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = fixtures_dir / "tensorflow" / "saved_model_signature"
    x = _rng(6).normal(size=(5, 4)).astype(F32)
    with caplog.at_level(logging.WARNING):
        model = TensorFlowModel(str(root / "saved_model.pb")).load()
    assert "reference variable" not in caplog.text  # a TF1 SavedModel, loaded quietly
    with model:
        assert [(s.name, s.shape) for s in model.inputs] == [("input", (None, 4))]
        assert [(s.name, s.shape) for s in model.outputs] == [("output", (None, 10))]
        got = model.predict({"input": x})["output"]
    direct = tf.saved_model.load(str(root)).signatures["serving_default"]
    want = direct(input=tf.constant(x))["output"].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_not_a_saved_model(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="does not load as a TensorFlow SavedModel"):
        TensorFlowModel(str(tmp_path / "saved_model.pb")).load()


def test_closed_model_refuses_to_predict(saved_dir: Path) -> None:
    model = TensorFlowModel(str(saved_dir)).load()
    model.close()
    with pytest.raises(ModelError, match="is not loaded"):
        model.predict({"a": _ab()[0], "b": _ab()[1]})


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="none.pb' does not exist; point model.path"):
        TensorFlowModel(str(tmp_path / "none.pb")).load()
