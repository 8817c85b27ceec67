"""Model outputs -> encoded results: top-N answers and output tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zoo_serving.serving.postprocess import is_class_vector, postprocess, top_n
from zoo_serving.wire.native import decode_result


def _reference_top_n(row: np.ndarray, n: int) -> list[tuple[int, float]]:
    """Plain sorting: highest score first, equal scores in index order."""
    ranked = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))
    return [(i, float(row[i])) for i in ranked[:n]]


@pytest.mark.parametrize("n", [1, 3, 5, 10])
@pytest.mark.parametrize("seed", range(5))
def test_top_n_matches_plain_sorting(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # few distinct values, so ties are common
    scores = rng.integers(0, 4, size=(6, 10)).astype(np.float32) / 4
    got = top_n(scores, n)
    assert len(got) == 6
    for row, answer in zip(scores, got):
        assert answer == _reference_top_n(row, n)


@settings(max_examples=400, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        # few distinct values: ties across the cut; NaN and infinities: rows the fast path
        # must hand to the full sort
        elements=st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.0, np.inf, -np.inf, np.nan]),
    ),
    st.integers(0, 14),
)
def test_top_n_is_a_stable_full_sort(scores: np.ndarray, n: int) -> None:
    """Whatever the path taken, the answer is that of a stable sort of every score."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    best = np.take_along_axis(scores, order, axis=1)
    expected = [list(zip(i.tolist(), v.tolist())) for i, v in zip(order, best)]
    assert repr(top_n(scores, n)) == repr(expected)  # repr: NaN equals NaN


def test_top_n_ties_keep_index_order() -> None:
    scores = np.array([[0.2, 0.5, 0.5, 0.1, 0.5]], np.float32)
    assert top_n(scores, 4) == [[(1, 0.5), (2, 0.5), (4, 0.5), (0, pytest.approx(0.2))]]


def test_top_n_larger_than_classes_is_clipped() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    got = top_n(scores, 10)
    assert [[i for i, _ in row] for row in got] == [[1, 2, 0], [0, 1, 2]]


def test_top_n_gives_python_types() -> None:
    ((pair,),) = top_n(np.array([[0.25, 0.75]], np.float64), 1)
    assert pair == (1, 0.75)
    assert type(pair[0]) is int and type(pair[1]) is float


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((4, 10), np.float32, True),
        ((4, 1, 10), np.float32, True),
        ((1, 10), np.float64, True),
        ((4, 4, 4), np.float32, False),
        ((4,), np.float32, False),
        ((4, 1), np.float32, False),
        ((4, 10), np.int64, False),
    ],
)
def test_is_class_vector(shape: tuple[int, ...], dtype: type, expected: bool) -> None:
    assert is_class_vector({"out": np.zeros(shape, dtype)}) is expected


def test_two_outputs_are_not_a_class_vector() -> None:
    outputs = {"a": np.zeros((2, 5), np.float32), "b": np.zeros((2, 5), np.float32)}
    assert not is_class_vector(outputs)


# ---------------------------------------------------------------- postprocess


def _scores(batch: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, classes)).astype(np.float32)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n", [1, 3])
def test_topn_results_for_batch_by_classes(n: int) -> None:
    scores = _scores(4, 12)
    results = postprocess({"prob": scores}, n=n, batch=4)
    assert len(results) == 4
    assert all(isinstance(r, bytes) for r in results)
    for row, blob in zip(scores, results):
        want = [[i, p] for i, p in _reference_top_n(row, n)]
        assert decode_result(blob) == want


def test_topn_results_for_batch_by_one_by_classes() -> None:
    scores = _scores(3, 7, seed=1)
    results = postprocess({"prob": scores[:, None, :]}, n=2, batch=3)
    assert [decode_result(b) for b in results] == [
        [[i, p] for i, p in _reference_top_n(row, 2)] for row in scores
    ]


def test_topn_clipped_to_class_count() -> None:
    scores = _scores(2, 3, seed=2)
    for row, blob in zip(scores, postprocess({"prob": scores}, n=5, batch=2)):
        got = decode_result(blob)
        assert isinstance(got, list) and len(got) == 3
        assert [i for i, _ in got] == [i for i, _ in _reference_top_n(row, 3)]


def test_top_n_zero_returns_the_tensor() -> None:
    scores = _scores(3, 5, seed=3)
    results = postprocess({"prob": scores}, n=0, batch=3)
    for row, blob in zip(scores, results):
        got = decode_result(blob)
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.float32
        assert got.tobytes() == row.tobytes()


def test_non_class_output_returns_the_tensor() -> None:
    rng = np.random.default_rng(4)
    out = rng.standard_normal((2, 4, 4)).astype(np.float32)
    results = postprocess({"boxes": out}, n=5, batch=2)
    for record, blob in zip(out, results):
        got = decode_result(blob)
        assert isinstance(got, np.ndarray)
        assert got.shape == (4, 4)
        np.testing.assert_array_equal(got, record)


def test_integer_output_returns_the_tensor() -> None:
    out = np.arange(10, dtype=np.int64).reshape(2, 5)
    results = postprocess({"ids": out}, n=1, batch=2)
    got = decode_result(results[1])
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, out[1])
    assert got.dtype == np.int64


def test_multi_output_returns_every_tensor() -> None:
    rng = np.random.default_rng(5)
    outputs = {
        "prob": _scores(3, 6, seed=6),
        "boxes": rng.standard_normal((3, 2, 4)).astype(np.float32),
        "count": np.array([[1], [2], [0]], np.int32),
    }
    results = postprocess(outputs, n=1, batch=3)
    assert len(results) == 3
    for i, blob in enumerate(results):
        got = decode_result(blob)
        assert isinstance(got, dict)
        assert list(got) == list(outputs)
        for name, arr in outputs.items():
            assert got[name].dtype == arr.dtype
            np.testing.assert_array_equal(got[name], arr[i])


def test_per_record_scalar_output_keeps_its_shape() -> None:
    out = np.array([0.25, 0.5, 0.75], np.float32)  # one score per record
    results = postprocess({"score": out}, n=1, batch=3)
    for value, blob in zip(out, results):
        got = decode_result(blob)
        assert isinstance(got, np.ndarray)
        assert got.shape == ()
        assert got.item() == value


def test_answers_with_top_n_follows_is_class_vector_on_the_described_shapes() -> None:
    from zoo_serving.backends.base import TensorSpec
    from zoo_serving.serving.postprocess import answers_with_top_n

    def spec(shape: tuple, dtype: str = "<f4", ranked: bool = True) -> TensorSpec:
        return TensorSpec("y", np.dtype(dtype), shape, ranked)

    assert answers_with_top_n([spec((None, 10))], 3)
    assert answers_with_top_n([spec((None, 1, 10))], 3)
    assert answers_with_top_n([spec((None, None))], 3)  # a free dim counts as classes
    assert not answers_with_top_n([spec((None, 10))], 0)
    assert not answers_with_top_n([spec((None, 10)), spec((None, 4))], 3)
    assert not answers_with_top_n([spec((None, 4, 10))], 3)
    assert not answers_with_top_n([spec((None, 10), "<i8")], 3)
    assert not answers_with_top_n([spec((None,), ranked=False)], 3)
