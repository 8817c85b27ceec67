"""Caffe: ``*.prototxt`` + ``*.caffemodel`` read with our own protobuf schema (``caffe.proto``)
and converted to ONNX layer by layer (:mod:`.convert`, :mod:`.graph`, :mod:`.layers`,
:mod:`.layers_basic`); :class:`CaffeModel` serves the result."""

from __future__ import annotations

from .model import CaffeModel, find_caffe_files

__all__ = ["CaffeModel", "find_caffe_files"]
