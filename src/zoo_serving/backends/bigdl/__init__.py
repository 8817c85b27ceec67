"""BigDL: ``*.model`` files (a protobuf ``BigDLModule``) read by our own reader
(:mod:`.reader`) and converted to ONNX module by module (:mod:`.convert`, :mod:`.layers`);
:class:`BigDLModel` serves the result."""

from __future__ import annotations

from .model import BigDLModel

__all__ = ["BigDLModel"]
