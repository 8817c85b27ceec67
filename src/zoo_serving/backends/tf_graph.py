"""TensorFlow models run by tensorflow-cpu: frozen GraphDefs and SavedModels.

Two layouts (see DESIGN.md §3):

* **frozen graph**: one ``*.pb`` GraphDef with its weights folded into constants, and optionally
  ``graph_meta.json`` beside it whose ``input_names`` / ``output_names`` list tensor names
  (``"Placeholder:0"``). Without it (or without one of the two keys) the inputs are the graph's
  ``Placeholder`` ops and the outputs are its sink ops, the ops whose outputs nothing consumes.
* **SavedModel**: a directory with ``saved_model.pb`` and ``variables/``, TF2 or TF1; the
  signature served is ``model.signature`` (``serving_default`` by default).

Images are fed NHWC (``image_layout = "HWC"``), as TensorFlow models take them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    AmbiguousModelError,
    InferenceError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from .base import Model, TensorSpec

log = logging.getLogger(__name__)

#: file beside a frozen graph naming its input and output tensors
GRAPH_META = "graph_meta.json"
#: file names that make a path a SavedModel rather than a frozen graph
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
#: op types never taken as a frozen graph's outputs, though nothing consumes them
# fmt: off
_NOT_OUTPUTS = frozenset({
    "Assert", "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "Const", "NoOp",
    "HistogramSummary", "ImageSummary", "MergeSummary", "ScalarSummary", "WriteSummary",
    "Placeholder", "PlaceholderWithDefault", "Print", "PrintV2",
    "Restore", "RestoreV2", "Save", "SaveV2",
})
# fmt: on
#: op types that mean a graph was not frozen
_VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})
#: numpy dtype kinds zoo_serving can feed and encode: bool, ints, floats, complex
_NUMERIC_KINDS = frozenset("biufc")
#: the default of ``model.signature``; only it falls back to a SavedModel's only signature
DEFAULT_SIGNATURE = "serving_default"


def _import_tensorflow() -> Any:
    # quiet TF's C++ INFO/WARNING logs unless the user chose a level (TF 2.21's two oneDNN
    # lines at import slip through a level set in-process; the environment silences them too)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            "the tensorflow backend needs TensorFlow: pip install 'zoo-serving[tf]'"
        ) from None
    return tf


def _set_threads(tf: Any, threads: int) -> None:
    """Intra-op threads from ``params.threads`` (0: TF's default), one inter-op thread as the
    ONNX backend; TF only allows this before its runtime starts, so later it is logged, not set."""
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning(
            "params.threads=%d not applied: TensorFlow already runs in this process with "
            "%d intra-op threads (0: its default); start a fresh process to change them",
            threads,
            tf.config.threading.get_intra_op_parallelism_threads(),
        )


def _spec(
    name: str, dtype: Any, shape: Any, what: str, unranked: tuple[int | None, ...] = (None,)
) -> TensorSpec:
    """TensorSpec of a TF tensor or TensorSpec; unknown dims become None, an unknown rank
    becomes ``unranked``."""
    np_dtype = np.dtype(dtype.as_numpy_dtype) if dtype.is_numpy_compatible else None
    if np_dtype is None or np_dtype.kind not in _NUMERIC_KINDS:
        raise UnsupportedModelError(
            f"TensorFlow {what} {name!r} has dtype {dtype.name}, which zoo_serving cannot "
            "feed or encode; serve a model whose inputs and outputs are numeric tensors"
        )
    dims = tuple(shape.as_list()) if shape.rank is not None else unranked
    return TensorSpec(name, np_dtype, dims, ranked=shape.rank is not None)


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``data.shape`` channels last: C,H,W -> H,W,C; other ranks as they are."""
    return (*shape[1:], shape[0]) if len(shape) == 3 else tuple(shape)


def _tensor_name(name: str) -> str:
    """A tensor name for graph lookup: ``"x"`` means output 0 of op ``x``."""
    return name if ":" in name else f"{name}:0"


def is_saved_model(path: Path) -> bool:
    """True when ``path`` is a SavedModel directory or its ``saved_model.pb``."""
    if path.is_dir():
        return any((path / f).is_file() for f in _SAVED_MODEL_FILES)
    return path.name in _SAVED_MODEL_FILES


class TensorFlowModel(Model):
    """A TensorFlow frozen graph (``*.pb`` [+ ``graph_meta.json``]) or SavedModel.

    ``path`` is the model's main file (the frozen ``*.pb``, or ``saved_model.pb`` inside a
    SavedModel) or its directory. Several inputs and outputs are matched by name.

    Input and output order: a frozen graph's are ``graph_meta.json``'s order, else graph order
    (the order of the ops in the GraphDef); a SavedModel's are the signature's keys, sorted, which
    is how TensorFlow itself flattens a signature. A frozen graph's names are tensor names
    (``"x:0"``); ``predict`` also takes them without the ``:0``. A SavedModel's names are its
    signature keys.

    Example::

        model = TensorFlowModel("models/resnet/saved_model.pb").load()
        out = model.predict({"input_1": images_nhwc})
    """

    backend = "tensorflow"
    image_layout = "HWC"

    def _load(self) -> None:
        tf = _import_tensorflow()
        self._tf = tf
        _set_threads(tf, self.options.threads)
        path = Path(self.path)
        if not path.exists():
            raise ModelNotFoundError(
                f"TensorFlow model {self.path!r} does not exist; point model.path at a frozen "
                "*.pb or a SavedModel directory",
                path=self.path,
            )
        if is_saved_model(path):
            self._load_saved_model(tf, path if path.is_dir() else path.parent)
        else:
            self._load_frozen(tf, self._frozen_file(path))

    # ------------------------------------------------------------ SavedModel

    def _load_saved_model(self, tf: Any, root: Path) -> None:
        tf_log = logging.getLogger("tensorflow")
        quiet = _DropReferenceVariableWarnings()
        tf_log.addFilter(quiet)
        try:
            loaded = tf.saved_model.load(str(root))
        except Exception as exc:
            raise ModelError(
                f"{str(root)!r} does not load as a TensorFlow SavedModel: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            tf_log.removeFilter(quiet)
        fn = self._signature(loaded.signatures, root)
        # a signature takes keyword tensors and returns a dict (TF wraps a lone output as
        # {"output_0": ...}); both are ordered by key, as TF flattens them
        _, kwargs = fn.structured_input_signature
        self._inputs = [_spec(k, v.dtype, v.shape, "input") for k, v in sorted(kwargs.items())]
        self._outputs = [
            _spec(k, t.dtype, t.shape, "output") for k, t in sorted(fn.structured_outputs.items())
        ]
        self._keep = loaded  # the signature's variables live as long as the loaded object
        self._fn = fn
        self._saved = True

    def _signature(self, signatures: Mapping[str, Any], root: Path) -> Any:
        """The configured signature, or the only one when the default is asked for and absent."""
        want = self.options.signature
        names = sorted(signatures)
        if want in signatures:
            return signatures[want]
        if want == DEFAULT_SIGNATURE and len(names) == 1:
            log.info("SavedModel %s has no %r signature; serving its only one", root, want)
            return signatures[names[0]]
        available = ", ".join(repr(n) for n in names) or "none"
        raise ModelError(
            f"model.signature: SavedModel {str(root)!r} has no signature {want!r}; "
            f"available: {available}; set model.signature to one of them",
            path=str(root),
        )

    # ------------------------------------------------------------ frozen graph

    def _frozen_file(self, path: Path) -> Path:
        if path.is_file():
            return path
        pbs = sorted(path.glob("*.pb"))
        if len(pbs) != 1:
            found = ", ".join(p.name for p in pbs) or "none"
            error = AmbiguousModelError if pbs else ModelNotFoundError
            raise error(
                f"{str(path)!r}: expected one frozen *.pb, found {found}; "
                "set model.path to the file",
                path=str(path),
            )
        return pbs[0]

    def _load_frozen(self, tf: Any, pb: Path) -> None:
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(pb.read_bytes())
        except Exception as exc:
            raise ModelError(
                f"{str(pb)!r} is not a TensorFlow GraphDef ({type(exc).__name__}: {exc}); "
                "freeze the model (convert_variables_to_constants_v2) or save a SavedModel"
            ) from exc
        variables = sorted(n.name for n in graph_def.node if n.op in _VARIABLE_OPS)
        if variables:
            raise UnsupportedModelError(
                f"{str(pb)!r} is not frozen: it holds variables {variables[:5]}; freeze it with "
                "convert_variables_to_constants_v2 or save a SavedModel"
            )

        def import_graph() -> None:
            tf.compat.v1.import_graph_def(graph_def, name="")

        try:
            wrapped = tf.compat.v1.wrap_function(import_graph, [])
        except Exception as exc:
            raise ModelError(
                f"{str(pb)!r} does not import as a TensorFlow graph: {type(exc).__name__}: {exc}"
            ) from exc
        graph = wrapped.graph
        meta = _read_graph_meta(pb.parent / GRAPH_META)
        in_names = meta.get("input_names") or _placeholders(graph)
        out_names = meta.get("output_names") or _sinks(graph)
        if not in_names or not out_names:
            raise ModelError(
                f"{str(pb)!r}: found inputs {in_names} and outputs {out_names}; name them in "
                f"{GRAPH_META} beside the graph as input_names / output_names"
            )
        ins = [_lookup(graph, n, "input", pb) for n in in_names]
        outs = [_lookup(graph, n, "output", pb) for n in out_names]
        # an input of unknown rank takes records of data.shape, channels last like an image
        unranked = (None, *_hwc(self.options.input_shape))
        self._inputs = [
            _spec(n, t.dtype, t.shape, "input", unranked) for n, t in zip(in_names, ins)
        ]
        self._outputs = [_spec(n, t.dtype, t.shape, "output") for n, t in zip(out_names, outs)]
        try:
            self._fn = wrapped.prune(ins, outs)
        except Exception as exc:
            raise ModelError(
                f"{str(pb)!r}: outputs {out_names} cannot be computed from inputs {in_names}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._keep = wrapped
        self._saved = False
        log.debug("frozen graph %s: inputs %s, outputs %s", pb, in_names, out_names)

    # ------------------------------------------------------------ predict

    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        arrays = [self._input(batch, spec) for spec in self._inputs]
        tensors = [tf.convert_to_tensor(a) for a in arrays]
        if self._saved:
            result = self._fn(**{s.name: t for s, t in zip(self._inputs, tensors)})
            values = [result[s.name] for s in self._outputs]
        else:
            values = self._fn(*tensors)
        return {s.name: v.numpy() for s, v in zip(self._outputs, values)}

    def _input(self, batch: Mapping[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
        arr = batch.get(spec.name)
        if arr is None and spec.name.endswith(":0"):
            arr = batch.get(spec.name[:-2])
        if arr is None:
            want = ", ".join(repr(s.name) for s in self._inputs)
            got = ", ".join(repr(k) for k in batch)
            raise InferenceError(
                f"tensorflow model: no input {spec.name!r} in the batch; "
                f"the model takes {want}, got {got}"
            )
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        self._fn = None
        self._keep = None
        super().close()


class _DropReferenceVariableWarnings(logging.Filter):
    """TF warns, per variable and several times, that a TF1 SavedModel's reference variables
    are not visible to training APIs; serving does not train."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "because it is a reference variable" not in record.getMessage()


def _read_graph_meta(path: Path) -> dict[str, list[str]]:
    """``input_names`` / ``output_names`` of a ``graph_meta.json``; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{str(path)!r}: expected a JSON object, got {type(meta).__name__}")
    out: dict[str, list[str]] = {}
    for key in ("input_names", "output_names"):
        names = meta.get(key)
        if names is None:
            continue
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ModelError(
                f"{str(path)!r}: {key} must be a list of tensor names like "
                f'["input:0"], got {names!r}'
            )
        out[key] = names
    return out


def _lookup(graph: Any, name: str, what: str, pb: Path) -> Any:
    try:
        return graph.get_tensor_by_name(_tensor_name(name))
    except (KeyError, ValueError) as exc:
        placeholders = ", ".join(_placeholders(graph)) or "none"
        raise ModelError(
            f"{str(pb)!r}: {what} tensor {name!r} is not in the graph ({exc}); "
            f"its placeholders are {placeholders}; fix {GRAPH_META}"
        ) from exc


def _placeholders(graph: Any) -> list[str]:
    return [op.outputs[0].name for op in graph.get_operations() if op.type == "Placeholder"]


def _sinks(graph: Any) -> list[str]:
    """Outputs of the ops whose outputs nothing consumes (numeric tensors only)."""
    consumed = {t.name for op in graph.get_operations() for t in op.inputs}
    names: list[str] = []
    for op in graph.get_operations():
        if op.type in _NOT_OUTPUTS or not op.outputs:
            continue
        if any(t.name in consumed for t in op.outputs):
            continue
        names.extend(t.name for t in _numeric(op.outputs))
    return names


def _numeric(tensors: Iterable[Any]) -> list[Any]:
    return [
        t
        for t in tensors
        if t.dtype.is_numpy_compatible and np.dtype(t.dtype.as_numpy_dtype).kind in _NUMERIC_KINDS
    ]
