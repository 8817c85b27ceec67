"""BigDL ``*.model`` files (a protobuf ``BigDLModule``) read by our own reader, converted to ONNX.

The file is read by :mod:`.reader` (tensors as NumPy arrays); each module becomes ONNX
nodes by :mod:`.layers`; :func:`convert` walks the containers and emits an ONNX model
(opset 17, IR 8, float32, batch dimension ``N``) that ONNX Runtime or OpenVINO can run.

Containers: Sequential, StaticGraph (also Graph, DynamicGraph without control ops), ConcatTable,
Concat. Modules: Linear, SpatialConvolution, SpatialMaxPooling, SpatialAveragePooling,
(Spatial)BatchNormalization, ReLU, Tanh, Sigmoid, SoftMax, LogSoftMax, Reshape, View, Dropout,
CAddTable, JoinTable, Identity, Input. Any other module type is an
:class:`~zoo_serving.errors.UnsupportedModelError` naming it. Example::

    model = convert("lenet/bigdl_lenet.model", input_shape=(1, 28, 28))
    onnx.save(model, "lenet.onnx")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConfigError, MissingDependencyError, UnsupportedModelError
from . import layers
from .layers import Shape, Value
from .reader import Module, TensorReader, read_module, short_type

__all__ = ["convert", "convert_module", "supported_types"]

Progress = Callable[[int, int], None]

OPSET = 17
IR_VERSION = 8
_PASS_THROUGH = {"Identity", "Input", "Dropout"}
_GRAPHS = ("StaticGraph", "Graph", "DynamicGraph")


def supported_types() -> list[str]:
    """Short names of the module types the converter knows."""
    return sorted({*layers.HANDLERS, *_CONTAINERS})


def convert(
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
) -> Any:
    """Convert the BigDL model at ``path`` to an ``onnx.ModelProto``.

    Args:
        path: the ``*.model`` file.
        input_shape: the shape of one record without the batch dimension (``data.shape``);
            None takes it from the first module (the size of a first Reshape / View, the input
            planes of a first convolution, the inputs of a first Linear).
        progress: called as ``progress(done, total)`` after each module.

    Raises:
        UnsupportedModelError: a module type the converter does not know, named in the message.
        ConfigError: ``input_shape`` does not fit the model's first module.
    """
    root = read_module(path)
    return convert_module(root, input_shape, progress, source=Path(path).name)


def convert_module(
    root: Any,
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
    source: str = "",
) -> Any:
    """:func:`convert` for a ``BigDLModule`` message already in memory."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        raise MissingDependencyError(
            "converting BigDL models needs onnx: pip install 'zoo-serving[onnx]'"
        ) from None
    reader = TensorReader(root)
    given = tuple(int(d) for d in input_shape) if input_shape is not None else None
    shapes = [_record_shape(pb, reader, given) for pb in _entries(root, reader)]
    total = _count(root)
    conv = layers.Emitter(reader, total, progress)
    xs: list[Value] = []
    for i, shape in enumerate(shapes):
        name = "input" if len(shapes) == 1 else f"input_{i}"
        conv.used.add(name)
        xs.append((name, (None, *shape)))
    ys = _emit(conv, root, xs)
    outputs = []
    for i, (name, shape) in enumerate(ys):
        out = "output" if len(ys) == 1 else f"output_{i}"
        conv.nodes.append(helper.make_node("Identity", [name], [out], name=out))
        outputs.append(_info(helper, TensorProto, out, shape))
    if progress is not None and conv.done < total:
        progress(total, total)  # graph nodes no output depends on are not converted
    graph = helper.make_graph(
        conv.nodes,
        root.name or "bigdl",
        [_info(helper, TensorProto, name, shape) for name, shape in xs],
        outputs,
        initializer=conv.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zoo_serving"
    )
    model.ir_version = IR_VERSION
    model.doc_string = f"converted from BigDL {root.moduleType} {source}".strip()
    return model


def _info(helper: Any, tensor_proto: Any, name: str, shape: Shape) -> Any:
    dims = ["N" if i == 0 and d is None else d for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, tensor_proto.FLOAT, dims)


def _count(module: Any) -> int:
    return 1 + sum(_count(sub) for sub in module.subModules)


def _emit(conv: layers.Emitter, pb: Any, xs: list[Value]) -> list[Value]:
    module = Module(pb, conv.reader)
    container = _CONTAINERS.get(module.short or "")
    handler = layers.HANDLERS.get(module.short or "")
    if container is not None:
        ys = container(conv, module, xs)
    elif handler is not None:
        ys = handler(conv, module, xs)
    else:
        raise UnsupportedModelError(
            f"BigDL module {module.name!r} has type {module.short_or_full} ({module.type}), "
            f"which zoo_serving cannot convert; supported: {', '.join(supported_types())}",
            module_type=module.type,
            module=module.name,
        )
    conv.tick()
    return ys


def _sequential(conv: layers.Emitter, m: Module, xs: list[Value]) -> list[Value]:
    for sub in m.pb.subModules:
        xs = _emit(conv, sub, xs)
    return xs


def _branches(conv: layers.Emitter, m: Module, xs: list[Value]) -> list[Value]:
    outs = []
    for sub in m.pb.subModules:
        ys = _emit(conv, sub, xs)
        if len(ys) != 1:
            raise UnsupportedModelError(f"{m.describe()}: branch {sub.name!r} returns a table")
        outs.append(ys[0])
    return outs


def _concat(conv: layers.Emitter, m: Module, xs: list[Value]) -> list[Value]:
    axis = int(m.attr("dimension")) - 1  # BigDL's Concat counts the batch dimension
    return [layers.concat(conv, m, _branches(conv, m, xs), axis)]


def _graph(conv: layers.Emitter, m: Module, xs: list[Value]) -> list[Value]:
    subs = {sub.name: sub for sub in m.pb.subModules}
    inputs, outputs = list(m.attr("inputNames")), list(m.attr("outputNames"))
    if len(inputs) != len(xs):
        raise UnsupportedModelError(
            f"{m.describe()} has {len(inputs)} inputs ({', '.join(inputs)}), given {len(xs)}"
        )
    values: dict[str, list[Value]] = {}
    for name in _topological(m, subs, outputs):
        sub = subs[name]
        args = [xs[inputs.index(name)]] if name in inputs else _node_inputs(m, sub, values)
        values[name] = _emit(conv, sub, args)
    return [v for name in outputs for v in values[name]]


def _node_inputs(m: Module, sub: Any, values: dict[str, list[Value]]) -> list[Value]:
    """A graph node's inputs: whole outputs of its pre-modules, or one element of a table."""
    edges_attr = m.pb.attr.get(f"{sub.name}_edges")
    edges = edges_attr.nameAttrListValue.attr if edges_attr is not None else {}
    pres = list(sub.preModules)
    args: list[Value] = []
    for pre in pres:
        index = edges[pre].int32Value if pre in edges else -1
        if index == -1 and len(pres) == 1:
            return list(values[pre])
        if index == -1 and len(values[pre]) != 1:
            raise UnsupportedModelError(f"{m.describe()}: {sub.name!r} takes a whole table")
        args.append(values[pre][0 if index == -1 else index - 1])
    return args


def _topological(m: Module, subs: dict[str, Any], outputs: list[str]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = in progress, 2 = done
    stack = [(name, False) for name in reversed(outputs)]
    while stack:
        name, expanded = stack.pop()
        if name not in subs:
            raise UnsupportedModelError(f"{m.describe()} refers to a missing node {name!r}")
        if expanded:
            state[name] = 2
            order.append(name)
        elif state.get(name) != 2:
            if state.get(name) == 1:
                raise UnsupportedModelError(f"{m.describe()} has a cycle through {name!r}")
            state[name] = 1
            stack.append((name, True))
            stack.extend((pre, False) for pre in reversed(subs[name].preModules))
    return order


_CONTAINERS: dict[str, Callable[[layers.Emitter, Module, list[Value]], list[Value]]] = {
    "Sequential": _sequential,
    "StaticGraph": _graph,
    "Graph": _graph,
    "DynamicGraph": _graph,
    "ConcatTable": _branches,
    "Concat": _concat,
}


def _entries(root: Any, reader: TensorReader) -> list[Any | None]:
    """Per model input, the first module that is not a container or a pass-through."""
    short = short_type(root.moduleType)
    if short in _GRAPHS:
        subs = {sub.name: sub for sub in root.subModules}
        names = reader.value(root.attr["inputNames"]) if "inputNames" in root.attr else []
        return [_through(subs, subs.get(name), reader) for name in names]
    if short in ("Sequential", "ConcatTable", "Concat"):
        for sub in root.subModules:
            if short_type(sub.moduleType) not in _PASS_THROUGH:
                return _entries(sub, reader)[:1]
        return [None]
    return [None if short in _PASS_THROUGH else root]


def _through(subs: dict[str, Any], node: Any, reader: TensorReader) -> Any | None:
    """Follow a graph input past pass-through modules to the module that uses it."""
    while node is not None and short_type(node.moduleType) in _PASS_THROUGH:
        users = [s for s in subs.values() if node.name in s.preModules]
        node = users[0] if len(users) == 1 else None
    return _entries(node, reader)[0] if node is not None else None


def _first_module_shape(m: Module) -> tuple[Shape | None, Callable[[Shape], bool], str]:
    """What a first module takes: its natural record shape, a test of a given one, in words."""
    if m.short in ("Reshape", "View"):
        sizes = tuple(int(d) for d in m.attr("size" if m.short == "Reshape" else "sizes"))
        n = math.prod(d for d in sizes if d != -1)
        if -1 in sizes:
            return None, lambda g: math.prod(g) % n == 0, f"records of a multiple of {n} values"
        example = ",".join(map(str, sizes))
        return sizes, lambda g: math.prod(g) == n, f"records of {n} values, e.g. {example}"
    if m.short in ("Linear", "BatchNormalization"):
        n = int(m.attr("inputSize" if m.short == "Linear" else "nOutput"))
        return (n,), lambda g: g == (n,), f"records of shape {n}"
    if m.short in layers.CHANNEL_ATTRS:
        ch = int(m.attr(layers.CHANNEL_ATTRS[m.short]))
        return (ch, None, None), lambda g: len(g) == 3 and g[0] == ch, f"C,H,W with C = {ch}"
    return None, lambda g: True, ""


def _record_shape(pb: Any, reader: TensorReader, given: tuple[int, ...] | None) -> Shape:
    """One record's shape for the model input that ``pb`` (an entry module) receives."""
    m = Module(pb, reader) if pb is not None else None
    natural, accepts, takes = _first_module_shape(m) if m else (None, lambda g: True, "")
    first = m.describe() if m is not None else "a pass-through module"
    if given is not None and not accepts(given):
        raise ConfigError(
            f"data.shape {','.join(map(str, given))} does not fit the BigDL model: its first "
            f"module {first} takes {takes}; set data.shape to match",
            key="data.shape",
            value=",".join(map(str, given)),
        )
    if given is not None:
        return given
    if natural is None:
        raise ConfigError(
            f"cannot tell the input shape of a BigDL model whose first module is {first}; "
            "give the record shape as data.shape (input_shape)",
            key="data.shape",
        )
    return natural
