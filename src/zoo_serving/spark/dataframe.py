"""The DataFrame API: run a served model over a column of a Spark DataFrame, inside the
caller's own Spark job.

The rows go through the same steps as records from the stream: the same image decoding and
tensor checks (:class:`~zoo_serving.serving.preprocess.Preprocessor`), batches of
``params.batch_size`` through the same batch core (:class:`~zoo_serving.serving.batch.BatchCore`:
the same backend, the same postprocessing, a bad row failing alone).

Example::

    from zoo_serving import predict_df

    scored = predict_df(images_df, "jpeg", "config.yaml")           # binary column
    scored.select("path", "prediction", "error").show()

Executors load the model once per Python worker process and keep it for later tasks (Spark
reuses its Python workers); the model directory reaches them as for the spark runner
(:func:`zoo_serving.spark.session.model_location`).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..config import Config, load_config
from ..errors import ConfigError, DecodeError, MissingInputError, ModelError, ZooServingError
from ..serving.batch import BatchCore, Record, load_served_model, preprocessor
from ..serving.remote import shipped_config
from ..wire.native import RawInput, Request, decode_result
from .session import ModelLocation, model_location, require_pyspark

__all__ = ["predict_df"]

IMAGE = "image"
TENSOR = "tensor"


def predict_df(
    df: Any,
    column: str,
    config: Any,
    *,
    output_col: str = "prediction",
    error_col: str = "error",
    keep_input: bool = True,
) -> Any:
    """``df`` with two columns added: the model's answer for ``column`` and the row's error.

    Args:
        df: a Spark DataFrame.
        column: the input, either ``binary`` (an encoded image: JPEG, PNG, ...; decoded and
            resized as the server does) or an array of numbers (a tensor: flat in C order, or
            nested, reshaped to the model input's record shape; floats of another width are
            cast to the model's dtype).
        config: the serving config (path, mapping or :class:`~zoo_serving.Config`); the model,
            ``data.shape``, ``params.batch_size``, ``params.top_n`` and ``params.threads``
            apply.
        output_col: with ``params.top_n`` > 0, a string: the top-N answer as JSON
            ``[[class_index, probability], ...]``, as in a top-N result on the wire; with 0, an
            ``array<float>``: the model's output for the row, flattened in C order.
        error_col: null for a row that succeeded, else ``"<code>: <message>"`` (the error
            codes of :mod:`zoo_serving.errors`); ``output_col`` is then null. A bad row
            never fails the job.
        keep_input: False leaves ``column`` out of the result, which spares Spark sending
            large tensors back from Python (several times faster for image-sized tensors).

    Raises:
        ConfigError: ``column`` missing or of another type, or an output name taken.

    Example::

        df = spark.createDataFrame(rows, "id long, x array<float>")
        predict_df(df, "x", {"model": {"path": "/models/cnn"}, "params": {"top_n": 5}})
    """
    require_pyspark()
    from pyspark.sql import types as T

    cfg = load_config(config)
    names = df.schema.fieldNames()
    if column not in names:
        raise ConfigError(
            f"predict_df: no column {column!r} in the DataFrame; its columns: {', '.join(names)}",
            key="column",
            value=column,
        )
    kind = _column_kind(column, df.schema[column].dataType)
    for name in (output_col, error_col):
        if name in names:
            raise ConfigError(
                f"predict_df: the DataFrame already has a column {name!r}; pick another "
                "output_col / error_col",
                key="output_col",
                value=name,
            )
    out_type = T.StringType() if cfg.params.top_n > 0 else T.ArrayType(T.FloatType())
    kept = [f for f in df.schema.fields if keep_input or f.name != column]
    schema = T.StructType(
        [
            *kept,
            T.StructField(output_col, out_type, True),
            T.StructField(error_col, T.StringType(), True),
        ]
    )
    model = model_location(df.sparkSession.sparkContext, cfg.model.path or "")
    job = functools.partial(
        _predict_batches,
        shipped_config(cfg, resolve_threads=False),
        model,
        (column, kind, output_col, error_col, keep_input),
    )
    return df.mapInPandas(job, schema)


def _column_kind(column: str, dtype: Any) -> str:
    from pyspark.sql import types as T

    if isinstance(dtype, T.BinaryType):
        return IMAGE
    inner = dtype
    while isinstance(inner, T.ArrayType):
        inner = inner.elementType
    if (
        inner is not dtype
        and isinstance(inner, T.NumericType)
        and not isinstance(inner, T.DecimalType)
    ):
        return TENSOR
    raise ConfigError(
        f"predict_df: column {column!r} is {dtype.simpleString()}; expected binary (encoded "
        "images) or an array of numbers (tensors)",
        key="column",
        value=column,
    )


# ---------------------------------------------------------------- on the executors


class RowServer:
    """The batch core fed with DataFrame values rather than stream entries: the same decode,
    batching, model and postprocessing, and no queue."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = load_served_model(config)
        self.preprocessor = preprocessor(self.model, config)
        self.core = BatchCore(self.model, config.params.top_n)

    def serve_values(self, values: Sequence[Any], kind: str) -> tuple[list[Any], list[Any]]:
        """(outputs, errors) for the values of one column: per value an output and None, or
        None and an error text."""
        outputs: list[Any] = [None] * len(values)
        errors: list[Any] = [None] * len(values)
        records: list[dict[str, np.ndarray]] = []
        rows: list[int] = []
        for i, value in enumerate(values):
            try:
                records.append(self.decode_value(value, kind))
                rows.append(i)
            except ZooServingError as exc:
                errors[i] = _error_text(exc)
            except Exception as exc:  # a decoder bug must not fail the job
                errors[i] = f"server: {type(exc).__name__}: {exc}"
        for i, blob in zip(rows, self.predict_records(records)):
            outputs[i], errors[i] = self._output(decode_result(blob))
        return outputs, errors

    def decode_value(self, value: Any, kind: str) -> dict[str, np.ndarray]:
        """One column value -> the model's input arrays, as the server decodes a record."""
        if value is None:
            raise MissingInputError("the row's input is null")
        if kind == IMAGE:
            raw = RawInput("input", "image", bytes(value))
        else:
            arr = self._tensor(value)
            raw = RawInput("input", "tensor", arr.tobytes(), arr.dtype.str, arr.shape)
        return self.preprocessor(Request(uri=b"", inputs=[raw]))

    def _tensor(self, value: Any) -> np.ndarray:
        spec = self.model.inputs[0]
        try:
            arr = _dense(value)
        except ValueError as exc:
            raise DecodeError(f"the row's array is ragged, not a tensor: {exc}") from None
        if arr.dtype != spec.dtype and np.can_cast(arr.dtype, spec.dtype, "same_kind"):
            arr = arr.astype(spec.dtype)
        want = self._record_shape()
        if arr.ndim == 1 and want is not None and len(want) != 1 and arr.size == np.prod(want):
            arr = arr.reshape(want)
        return arr

    def _record_shape(self) -> tuple[int, ...] | None:
        dims = list(self.model.inputs[0].record_shape)
        shape = self.config.data.shape
        if None in dims and len(shape) == len(dims):
            dims = [s if d is None else d for d, s in zip(dims, shape)]
        return None if None in dims else tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def predict_records(self, records: Sequence[dict[str, np.ndarray]]) -> list[bytes]:
        """Encoded results of decoded records, in batches of ``params.batch_size``."""
        rows = [Record(str(i).encode(), arrays=r) for i, r in enumerate(records)]
        size = self.config.params.batch_size
        for start in range(0, len(rows), size):
            self.core.serve(rows[start : start + size])
        return [row.result or b"" for row in rows]

    def _output(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, ZooServingError):
            return None, _error_text(value)
        if self.config.params.top_n > 0:
            if isinstance(value, list):
                return json.dumps(value, separators=(",", ":")), None
            return None, _error_text(
                ModelError(
                    "the model's output is not one vector of class scores; set params.top_n: 0 "
                    "to get it as a tensor"
                )
            )
        if isinstance(value, dict):
            return None, _error_text(
                ModelError(f"the model has {len(value)} outputs ({', '.join(value)}); one fits")
            )
        return np.asarray(value, dtype=np.float32).ravel(), None


_servers: dict[str, RowServer] = {}
_servers_lock = threading.Lock()


def _row_server(raw: dict[str, Any], model: ModelLocation) -> RowServer:
    """The RowServer of this config in this Python worker process, loaded on first use."""
    key = json.dumps([raw["model"], raw["params"], raw["data"], model.path], sort_keys=True)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            from pyspark import TaskContext

            config = load_config(raw)
            context = TaskContext.get()
            threads = config.params.threads or (context.cpus() if context is not None else 1)
            config = config.replace(**{"model.path": model.resolve(), "params.threads": threads})
            server = _servers[key] = RowServer(config)
    return server


def _predict_batches(
    raw: dict[str, Any],
    model: ModelLocation,
    columns: tuple[str, str, str, str, bool],
    batches: Iterator[Any],
) -> Iterator[Any]:
    column, kind, output_col, error_col, keep_input = columns
    server = _row_server(raw, model)
    for pdf in batches:
        outputs, errors = server.serve_values(pdf[column].tolist(), kind)
        if not keep_input:
            pdf = pdf.drop(columns=[column])
        yield pdf.assign(**{output_col: outputs, error_col: errors})


def _dense(value: Any) -> np.ndarray:
    """A (possibly nested) array value from Arrow -> one numeric ndarray."""
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.stack([_dense(v) for v in arr])
    return arr


def _error_text(exc: ZooServingError) -> str:
    return f"{exc.code}: {exc.message or exc}"
