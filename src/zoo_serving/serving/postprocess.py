"""Model outputs -> answers: the top-N classes of a score vector (NumPy only), or the output
tensors; :func:`postprocess` hands them to :mod:`zoo_serving.wire` to encode for each record's
protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import wire
from ..backends.base import TensorSpec

Pairs = list[tuple[int, float]]  # one record's top-N answer, best first


def is_class_vector(outputs: Mapping[str, np.ndarray]) -> bool:
    """One output whose record part is a vector of scores (``[C]`` or ``[1, C]``)."""
    if len(outputs) != 1:
        return False
    arr = next(iter(outputs.values()))
    record_shape = [d for d in arr.shape[1:] if d != 1]
    return arr.ndim >= 2 and len(record_shape) == 1 and arr.dtype.kind == "f"


def answers_with_top_n(outputs: Sequence[TensorSpec], n: int) -> bool:
    """Whether a model with these outputs is answered with top-``n`` pairs: the rule of
    :func:`is_class_vector` applied to the described shapes (a free dim counts as more than
    1; an output of unknown rank is taken for a tensor)."""
    if n <= 0 or len(outputs) != 1:
        return False
    spec = outputs[0]
    classes = [d for d in spec.record_shape if d != 1]
    return spec.ranked and len(spec.shape) >= 2 and len(classes) == 1 and spec.dtype.kind == "f"


def top_n(scores: np.ndarray, n: int) -> list[Pairs]:
    """Per row of a ``[batch, C]`` score matrix, the ``n`` best ``(class_index, score)``, best
    first; equal scores keep index order.

    A partition finds each row's n-th best score in O(C) and only the scores at or above it
    are sorted: a full sort of 1,000 classes per record cost more than a small model. Where
    a tie straddles the cut or a row holds NaN, the rows are fully (stably) sorted instead.
    """
    rows, classes = scores.shape
    n = min(n, classes)
    if 0 < n < classes:
        kth = np.partition(scores, classes - n, axis=1)[:, classes - n]
        above = scores >= kth[:, None]
        if (np.count_nonzero(above, axis=1) == n).all():
            r, c = np.nonzero(above)  # row by row, in index order
            picked = c.reshape(rows, n)
            values = scores[r, c].reshape(rows, n)
            by_score = np.argsort(-values, axis=1, kind="stable")
            row = np.arange(rows)[:, None]
            return _pairs(picked[row, by_score], values[row, by_score])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return _pairs(order, np.take_along_axis(scores, order, axis=1))


def _pairs(index: np.ndarray, value: np.ndarray) -> list[Pairs]:
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(index, value)]


def answers(outputs: Mapping[str, np.ndarray], n: int, batch: int) -> list[Pairs] | None:
    """Each record's top-``n`` ``(class_index, score)`` when ``n > 0`` and the model has a
    single class-score output; None when the answer is the output tensors."""
    if n > 0 and is_class_vector(outputs):
        scores = next(iter(outputs.values())).reshape(batch, -1)
        return top_n(scores, n)
    return None


def postprocess(
    outputs: Mapping[str, np.ndarray],
    n: int,
    batch: int,
    replies: Sequence[str] | None = None,
    origin: tuple[str, int] | None = None,
) -> list[bytes]:
    """Encoded results for each record of a batch.

    With ``n > 0`` and a single class-score output, each result is the top-``n`` answer;
    otherwise it is the record's slice of every output tensor. ``replies`` gives each record's
    protocol (:mod:`zoo_serving.wire`): Analytics Zoo records always get their output tensors
    in the original Arrow encoding, seed-era records the JSON top-N. ``origin`` (model name,
    version) is named in native results.
    """
    return wire.encode_results(outputs, batch, answers(outputs, n, batch), replies, origin)


def encode_seed_result(outputs: Mapping[str, np.ndarray], n: int) -> bytes:
    """The seed-era result of one record's ``outputs``: its top-``n`` as JSON when there is
    one to give, else its output tensor(s) as nested lists."""
    batched = {k: np.asarray(v)[None] for k, v in outputs.items()}
    pairs = answers(batched, n, 1)
    return wire.seed.encode_result(outputs, None if pairs is None else pairs[0])
