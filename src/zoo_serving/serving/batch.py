"""The batch core: decoded records in, encoded results out.

Shared by the stream worker (:mod:`.worker`) and the DataFrame API
(:mod:`zoo_serving.spark.dataframe`): records past their deadline fail without touching the
model; the rest are grouped by input shapes, stacked (in pieces, or padded, where the model's
batch size is fixed), run, and postprocessed into each record's result for its protocol. When
the model fails on a batch, the batch is split in halves until only the bad record(s) fail,
so batch-mates of a bad record get their normal results.

Example::

    core = BatchCore(model, top_n=5)
    records = [Record(b"a", arrays={"input": x}), Record(b"b", arrays={"input": y})]
    core.serve(records)
    records[0].result            # b'{"v":1,"kind":"topn","value":[[3,0.91],...]}'
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import wire
from ..backends import Model, ModelOptions, load_model
from ..config import Config
from ..errors import DeadlineExceededError, InferenceError, ZooServingError
from ..observe.stats import Counts, WorkerStats
from .postprocess import postprocess
from .preprocess import Preprocessor

log = logging.getLogger(__name__)
record_log = logging.getLogger("zoo_serving.records")


@dataclass(eq=False)
class Record:
    """One record through the batch core: its decoded inputs in, its encoded result out."""

    uri: bytes
    arrays: dict[str, np.ndarray] | None = None
    reply: str = wire.NATIVE  # its protocol: how its result is encoded
    deadline_ms: int | None = None  # Unix ms after which it is not worth running
    result: bytes | None = None
    version: int | None = None  # the model version it runs on (None: the only one)


def model_options(config: Config) -> ModelOptions:
    """What the config says about running the model."""
    return ModelOptions(
        threads=config.params.threads,
        engine_type=config.params.engine_type,
        batch_size=config.params.batch_size,
        input_shape=config.data.shape,
        signature=config.model.signature,
    )


def load_served_model(config: Config) -> Model:
    """The model at ``model.path``, loaded as the config says and warmed up."""
    model = load_model(config.model.path or "", config.model.backend, model_options(config))
    model.warmup(config.params.batch_size)
    return model


def preprocessor(model: Model, config: Config) -> Preprocessor:
    """The decoder of records for ``model``, with the config's image shape and limits."""
    return Preprocessor(
        model.inputs,
        image_shape=config.data.shape,
        image_layout=model.image_layout,
        max_payload_bytes=config.data.max_payload_bytes,
        max_image_pixels=config.data.max_image_pixels,
    )


def check_deadline(record: Record) -> None:
    """Raise DeadlineExceededError when ``record``'s deadline has passed."""
    if record.deadline_ms is not None and time.time() * 1000 > record.deadline_ms:
        late = time.time() * 1000 - record.deadline_ms
        raise DeadlineExceededError(
            f"deadline exceeded by {late:.0f} ms before the model ran; "
            "send it again with a later deadline"
        )


class BatchCore:
    """Runs batches of decoded records through one model.

    Args:
        model: a loaded model.
        top_n: classes per answer (``params.top_n``); 0 answers with the output tensors.
        stats: the counters to update (records succeeded and failed by code, batches).
        origin: the model's name and version, named in every native answer.

    After :meth:`serve`, :attr:`infer_s` and :attr:`post_s` hold the seconds the batch spent
    in the model and in postprocessing.
    """

    def __init__(
        self,
        model: Model,
        top_n: int,
        stats: WorkerStats | None = None,
        origin: tuple[str, int] | None = None,
    ) -> None:
        self.model = model
        self.top_n = top_n
        self.origin = origin
        self.stats = stats if stats is not None else WorkerStats()
        self.infer_s = 0.0
        self.post_s = 0.0

    def serve(self, batch: Sequence[Record], counts: Counts | None = None) -> None:
        """Give every record of ``batch`` its result (an answer or an error); count the
        outcomes in ``counts`` (default: :attr:`stats`)."""
        counts = self.stats if counts is None else counts
        self.infer_s = self.post_s = 0.0
        live = []
        for record in batch:
            try:
                check_deadline(record)
                live.append(record)
            except DeadlineExceededError as exc:
                self.fail(record, exc, counts)
        groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
        for record in live:
            assert record.arrays is not None
            groups[tuple((k, v.shape) for k, v in record.arrays.items())].append(record)
        for group in groups.values():
            self._predict_isolating(group, counts)
        counts.batches += 1

    def fail(self, record: Record, exc: BaseException, counts: Counts | None = None) -> None:
        """Answer ``record`` with the error result of ``exc``, count it and log it."""
        counts = self.stats if counts is None else counts
        record.result = wire.encode_failure(record.reply, exc)
        record.arrays = None
        code = exc.code if isinstance(exc, ZooServingError) else "server"
        counts.failed += 1
        counts.failures_by_code[code] += 1
        record_log.warning(
            "record failed uri=%s code=%s: %s", record.uri.decode("utf-8", "replace"), code, exc
        )

    def _predict_isolating(self, records: list[Record], counts: Counts) -> None:
        """Run the model; if the batch fails, split it so only the bad record(s) fail."""
        started = time.perf_counter()
        try:
            outputs = self.predict([r.arrays for r in records])  # type: ignore[misc]
            inferred = time.perf_counter()
            replies = [r.reply for r in records]
            results = postprocess(outputs, self.top_n, len(records), replies, self.origin)
        except Exception as exc:
            self.infer_s += time.perf_counter() - started
            if not isinstance(exc, ZooServingError):
                log.exception("unexpected error running the model")
                exc = InferenceError(f"{type(exc).__name__}: {exc}")
            if len(records) == 1:
                self.fail(records[0], exc, counts)
                return
            mid = len(records) // 2
            self._predict_isolating(records[:mid], counts)
            self._predict_isolating(records[mid:], counts)
            return
        self.infer_s += inferred - started
        self.post_s += time.perf_counter() - inferred
        for record, result in zip(records, results):
            record.result = result
            record.arrays = None
        counts.succeeded += len(records)

    def predict(self, records: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Stack records and run the model, in pieces or padded where its batch size is fixed."""
        n = len(records)
        fixed = self.model.inputs[0].max_batch
        step = fixed or n
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, step):
            chunk = records[start : start + step]
            batch = {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
            if fixed and len(chunk) < fixed:
                batch = {k: _pad(v, fixed) for k, v in batch.items()}
            out = self.model.predict(batch)
            parts.append({k: v[: len(chunk)] for k, v in out.items()})
        if len(parts) == 1:
            outputs = parts[0]
        else:
            outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        described = {spec.name: spec for spec in self.model.outputs}
        for name, arr in outputs.items():
            if arr.shape[:1] != (n,):
                raise InferenceError(
                    f"output {name!r} has shape {arr.shape}; expected {n} rows, one per record"
                )
            spec = described.get(name)
            if spec is not None and not spec.fits(arr.shape[1:]):
                raise InferenceError(
                    f"output {name!r} is {_dims(arr.shape[1:])} per record, but the model "
                    f"describes it as {_dims(spec.record_shape)}; the model or its declared "
                    "output shape is wrong for this input"
                )
        return outputs


def _dims(shape: Sequence[int | None]) -> str:
    text = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({text},)" if len(shape) == 1 else f"({text})"


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    pad = np.zeros((size - arr.shape[0], *arr.shape[1:]), dtype=arr.dtype)
    return np.concatenate([arr, pad])
