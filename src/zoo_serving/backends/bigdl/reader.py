"""Our own reader of BigDL ``*.model`` files: a protobuf ``BigDLModule`` (BigDL 0.5 and later).

:func:`read_module` parses a file with the schema in ``bigdl.proto``; :class:`TensorReader` turns
its tensors into NumPy arrays, resolving storages shared by id across the file and honouring each
tensor's offset, size and stride; :class:`Module` gives typed access to one module's attributes
and parameters. Example::

    root = read_module("bigdl_lenet.model")
    reader = TensorReader(root)
    fc1 = Module(root.subModules[3], reader)
    weight, bias = fc1.params()  # [out, in], [out]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MissingDependencyError, ModelNotFoundError, UnsupportedModelError

__all__ = ["PREFIXES", "Module", "TensorReader", "read_module", "short_type"]

#: package prefixes of BigDL's own modules (BigDL 0.x and the later dllib)
PREFIXES = ("com.intel.analytics.bigdl.nn.", "com.intel.analytics.bigdl.dllib.nn.")
# storage fields holding numbers, and their dtypes
_DTYPES = {
    "float_data": np.float32,
    "double_data": np.float64,
    "int_data": np.int32,
    "long_data": np.int64,
}


def _pb2() -> Any:
    try:
        from . import bigdl_pb2
    except Exception as exc:  # the gencode raises its own VersionError on an old protobuf
        raise MissingDependencyError(
            f"reading BigDL models needs protobuf >= 7.35 (pip install -U protobuf): {exc}"
        ) from exc
    return bigdl_pb2


def read_module(path: str | os.PathLike[str]) -> Any:
    """The ``BigDLModule`` message of a BigDL ``*.model`` file.

    Raises:
        ModelNotFoundError: no such file.
        UnsupportedModelError: the file is not a BigDL protobuf model.
    """
    pb = _pb2()
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot read BigDL model {str(file)!r}: {exc}", path=str(file)
        ) from exc
    module = pb.BigDLModule()
    try:
        module.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise UnsupportedModelError(
            f"{str(file)!r} is not a BigDL model (a protobuf BigDLModule): {exc}"
        ) from exc
    if not module.moduleType:
        raise UnsupportedModelError(
            f"{str(file)!r} is not a BigDL model: its BigDLModule has no moduleType"
        )
    return module


class TensorReader:
    """NumPy arrays of the ``BigDLTensor`` messages of one model file.

    A storage's data appears once in the file (in BigDL 0.5 and later under the top module's
    ``global_storage`` attribute) and is referred to by id elsewhere; tensors are views into
    storages with a 1-based ``offset``, a ``size`` and a ``stride``.
    """

    def __init__(self, root: Any) -> None:
        self._storages: dict[int, Any] = {}
        self._flat: dict[int, np.ndarray] = {}
        self._collect_module(root)

    def array(self, tensor: Any) -> np.ndarray | None:
        """The tensor as a float32 array, or None for an empty (unset) tensor."""
        if not tensor.HasField("storage"):
            return None
        if tensor.tensorType == 1:  # QUANT: BigDL's int8 tensors
            raise UnsupportedModelError(f"tensor {tensor.id} is quantized, which is not supported")
        flat = self._storage(tensor.storage)
        sizes = tuple(tensor.size)
        if not sizes and not tensor.isScalar:
            return np.zeros((0,), np.float32)
        strides = tuple(tensor.stride) or _contiguous(sizes)
        offset = max(tensor.offset, 1) - 1
        reach = offset + sum((n - 1) * s for n, s in zip(sizes, strides)) if all(sizes) else -1
        if flat.size == 0 and reach >= 0:
            raise UnsupportedModelError(
                f"tensor {tensor.id} refers to storage {tensor.storage.id}, "
                "whose data is not in the file"
            )
        if len(strides) != len(sizes) or min(strides, default=0) < 0 or reach >= flat.size:
            raise UnsupportedModelError(
                f"tensor {tensor.id} (size {list(sizes)}, stride {list(strides)}, offset "
                f"{tensor.offset}) does not fit its storage {tensor.storage.id} "
                f"of {flat.size} values"
            )
        if not all(sizes):
            return np.zeros(sizes, np.float32)
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=sizes, strides=[s * flat.itemsize for s in strides]
        )
        return np.array(view, dtype=np.float32)

    def value(self, attr: Any) -> Any:
        """The Python value of an ``AttrValue``: scalars, lists, arrays; None when unset."""
        kind = attr.WhichOneof("value")
        if kind is None:
            return None
        if kind == "tensorValue":
            return self.array(attr.tensorValue)
        if kind != "arrayValue":
            return getattr(attr, kind)
        arr = attr.arrayValue
        if arr.datatype == 10:  # TENSOR
            return [self.array(t) for t in arr.tensor]
        field = {1: "i64", 2: "flt", 3: "dbl", 4: "str", 5: "boolean", 13: "bigDLModule"}
        return list(getattr(arr, field.get(arr.datatype, "i32")))

    def _storage(self, storage: Any) -> np.ndarray:
        if storage.id not in self._flat:
            source = self._storages.get(storage.id, storage)
            for name, dtype in _DTYPES.items():
                if len(getattr(source, name)):
                    self._flat[storage.id] = np.asarray(getattr(source, name), dtype=dtype)
                    break
            else:
                self._flat[storage.id] = np.zeros((0,), np.float32)
        return self._flat[storage.id]

    def _collect_module(self, module: Any) -> None:
        for tensor in (module.weight, module.bias, *module.parameters):
            self._collect_tensor(tensor)
        for attr in module.attr.values():
            self._collect_attr(attr)
        for sub in module.subModules:
            self._collect_module(sub)

    def _collect_attr(self, attr: Any) -> None:
        kind = attr.WhichOneof("value")
        if kind == "tensorValue":
            self._collect_tensor(attr.tensorValue)
        elif kind == "bigDLModuleValue":
            self._collect_module(attr.bigDLModuleValue)
        elif kind == "nameAttrListValue":
            for value in attr.nameAttrListValue.attr.values():
                self._collect_attr(value)
        elif kind == "arrayValue":
            for tensor in attr.arrayValue.tensor:
                self._collect_tensor(tensor)
            for module in attr.arrayValue.bigDLModule:
                self._collect_module(module)

    def _collect_tensor(self, tensor: Any) -> None:
        storage = tensor.storage
        if any(len(getattr(storage, name)) for name in _DTYPES):
            self._storages.setdefault(storage.id, storage)


def _contiguous(sizes: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(sizes):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def short_type(module_type: str) -> str | None:
    """``Linear`` for ``com.intel.analytics.bigdl.nn.Linear``; None outside BigDL's nn package."""
    for prefix in PREFIXES:
        rest = module_type[len(prefix) :]
        if module_type.startswith(prefix) and rest and "." not in rest:
            return rest
    return None


class Module:
    """One ``BigDLModule`` message with typed access to its attributes and parameters."""

    def __init__(self, pb: Any, reader: TensorReader) -> None:
        self.pb = pb
        self.reader = reader
        self.name: str = pb.name or "<unnamed>"
        self.type: str = pb.moduleType
        self.short = short_type(pb.moduleType)
        self.short_or_full = self.short or pb.moduleType.rsplit(".", 1)[-1] or "<no moduleType>"

    def describe(self) -> str:
        return f"{self.short_or_full} {self.name!r}"

    def attr(self, key: str, *default: Any) -> Any:
        """An attribute's value; without a default, a missing attribute is an error."""
        value = self.reader.value(self.pb.attr[key]) if key in self.pb.attr else None
        if value is None:
            if default:
                return default[0]
            raise UnsupportedModelError(f"{self.describe()} has no attribute {key!r}")
        return value

    def params(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(weight, bias): the ``weight`` / ``bias`` fields, or ``parameters`` in later BigDL."""
        weight = self.reader.array(self.pb.weight) if self.pb.HasField("weight") else None
        bias = self.reader.array(self.pb.bias) if self.pb.HasField("bias") else None
        params = [self.reader.array(t) for t in self.pb.parameters]
        if weight is None and params:
            weight = params[0]
        if bias is None and len(params) > 1:
            bias = params[1]
        return weight, bias
