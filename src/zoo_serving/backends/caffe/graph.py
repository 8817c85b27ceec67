"""The ONNX graph the Caffe converter builds, and what one layer's conversion is given.

Shapes are tracked per tensor as :data:`Dims`: the batch dimension (always the first) is
``None``, every other dimension is static, since a Caffe net fixes them in its input declaration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ModelError, UnsupportedModelError

#: a blob's shape: None for the (free) batch dimension, ints for the rest
Dims = tuple[int | None, ...]


def dims_text(dims: Sequence[int | None]) -> str:
    """``(N, 3, 5, 5)``: a shape for messages."""
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


class Graph:
    """Nodes, initializers and tensor shapes of the ONNX graph under construction.

    Args:
        batch: the batch size the Caffe net declares (its inputs' first dimension); the ONNX
            graph leaves the batch free, but a Reshape may spell the batch out as this number.
    """

    def __init__(self, batch: int = 1) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.batch = batch
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.shapes: dict[str, Dims] = {}
        self._used: set[str] = set()

    def reserve(self, names: Iterable[str]) -> None:
        """Keep ``names`` (the Caffe blob names) out of :meth:`fresh`'s answers."""
        self._used.update(names)

    def fresh(self, hint: str) -> str:
        """A tensor name not used yet, ``hint`` itself where possible."""
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def shape(self, name: str) -> Dims:
        return self.shapes[name]

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        """Add an initializer holding ``value`` (as ``dtype``); returns its name."""
        name = self.fresh(hint)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (shapes, pads, axes)."""
        return self.const(hint, list(values), np.int64)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        dims: Dims,
        *,
        out: str | None = None,
        hint: str = "",
        **attrs: Any,
    ) -> str:
        """Add one node with one output of shape ``dims``; returns the output's name.

        The output is ``out`` when given (a name the caller owns), else a fresh name from ``hint``.
        """
        name = out if out is not None else self.fresh(hint or op_type.lower())
        node = self._helper.make_node(op_type, list(inputs), [name], name=name, **attrs)
        self.nodes.append(node)
        self.shapes[name] = tuple(dims)
        return name


@dataclass(frozen=True)
class LayerCall:
    """One Caffe layer to convert: its definition, the ONNX names of its bottoms, the ONNX names
    its tops must get, its weight blobs, and the dims each blob was written with."""

    layer: Any  # caffe_pb2.LayerParameter
    inputs: list[str]
    outputs: list[str]
    blobs: list[np.ndarray]
    dims: Sequence[tuple[int, ...] | None] = ()

    @property
    def name(self) -> str:
        return str(self.layer.name)

    @property
    def type(self) -> str:
        return str(self.layer.type)

    @property
    def out(self) -> str:
        """The ONNX name of the (first) top."""
        return self.outputs[0]

    def hint(self, suffix: str) -> str:
        """A name hint for a tensor inside this layer."""
        return f"{self.name}/{suffix}"

    def error(self, message: str) -> ModelError:
        """A :class:`ModelError` for a net that is wrong, naming this layer."""
        return ModelError(f"Caffe layer {self.name!r} ({self.type}): {message}", layer=self.name)

    def unsupported(self, message: str) -> UnsupportedModelError:
        """An :class:`UnsupportedModelError` for what the converter lacks, naming this layer."""
        return UnsupportedModelError(
            f"Caffe layer {self.name!r} ({self.type}): {message}", layer=self.name
        )

    def blob(self, index: int, what: str, shape: Sequence[int]) -> np.ndarray:
        """Weight blob ``index`` as float32 of ``shape``, the shape the layer's parameters give.

        Only the count must match: the blob's own dims may differ (legacy 4-D blobs), or may
        not hold its values at all (files from BigDL's Caffe persister), as in BigDL's loader.
        """
        if index >= len(self.blobs):
            raise self.error(
                f"expected {what} as weight blob {index}, but the layer has "
                f"{len(self.blobs)} blob(s); is the .caffemodel the one trained for this net?"
            )
        blob = self.blobs[index]
        want = tuple(int(d) for d in shape)
        if blob.size != math.prod(want):
            written = self.dims[index] if index < len(self.dims) else tuple(blob.shape)
            if written is not None and math.prod(written) != blob.size:
                raise self.error(
                    f"{what} (blob {index}) has {blob.size} values, which neither its dims "
                    f"{written} nor this layer's parameters fit: the layer needs {want}, "
                    f"{math.prod(want)} values"
                )
            raise self.error(
                f"{what} (blob {index}) has shape {tuple(blob.shape)}, {blob.size} values; "
                f"this layer needs {want}, {math.prod(want)} values"
            )
        return blob.astype(np.float32, copy=False).reshape(want)

    def single(self) -> str:
        """The ONNX name of the one bottom (an error for a layer with more bottoms or tops)."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise self.error(
                f"takes one bottom and one top, got {len(self.inputs)} and {len(self.outputs)}"
            )
        return self.inputs[0]


def axis_index(call: LayerCall, axis: int, rank: int, what: str = "axis") -> int:
    """A Caffe axis (negative counts from the end) as an index; the batch axis 0 is refused."""
    index = axis + rank if axis < 0 else axis
    if not 0 <= index < rank:
        raise call.error(f"{what} {axis} is out of range for a {rank}-D blob")
    if index == 0:
        raise call.unsupported(
            f"{what} {axis} is the batch axis; the converted model keeps the batch dimension "
            "free, so a layer cannot work across it"
        )
    return index
