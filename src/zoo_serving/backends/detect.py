"""Model-directory detection: which framework a directory (or file) holds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AmbiguousModelError, IncompleteModelError, ModelNotFoundError


@dataclass(frozen=True)
class ModelLayout:
    """What detection found: the backend name, its main file, and the other files it needs."""

    backend: str
    main: Path
    files: dict[str, Path] = field(default_factory=dict)
    kind: str = ""  # e.g. "savedmodel" or "frozen" for tensorflow


def _one(files: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    return [f for f in files if f.suffix.lower() in suffixes]


def detect_model(path: str | os.PathLike[str]) -> ModelLayout:
    """Detect the framework of a model directory (or single model file).

    ====================================  =========================
    ``*.pb`` + ``variables/``             tensorflow (SavedModel)
    ``*.pb`` (+ ``graph_meta.json``)      tensorflow (frozen graph)
    ``*.prototxt`` + ``*.caffemodel``     caffe
    ``*.pt`` / ``*.pth``                  torch (TorchScript)
    ``*.model``                           bigdl
    ``*.xml`` + ``*.bin``                 openvino
    ``*.onnx``                            onnx
    ====================================  =========================

    Raises:
        ModelNotFoundError: no model, naming the files that are there.
        AmbiguousModelError: several models, naming them.
        IncompleteModelError: half a model (a .prototxt without .caffemodel, .xml without .bin).
    """
    root = Path(path)
    if root.is_file():
        files = [root]
        subdirs: list[Path] = []
        root_dir = root.parent
    elif root.is_dir():
        entries = sorted(root.iterdir())
        files = [e for e in entries if e.is_file()]
        subdirs = [e for e in entries if e.is_dir()]
        root_dir = root
    else:
        raise ModelNotFoundError(
            f"model.path {str(root)!r} does not exist; point it at a model directory",
            path=str(root),
        )

    found: list[ModelLayout] = []
    half: list[str] = []
    pbs = _one(files, (".pb",))
    saved = [f for f in files if f.name in ("saved_model.pb", "saved_model.pbtxt")]
    if saved and root.is_dir() and (root / "variables") in subdirs:
        # beside saved_model.pb, TF >= 2.11 writes fingerprint.pb: not a second model
        found.append(ModelLayout("tensorflow", saved[0], kind="savedmodel"))
    elif pbs:
        meta = root_dir / "graph_meta.json"
        extra = {"graph_meta": meta} if meta.is_file() else {}
        found.extend(ModelLayout("tensorflow", pb, extra, kind="frozen") for pb in pbs)
    for main_ext, other_ext, backend in (
        (".prototxt", ".caffemodel", "caffe"),
        (".xml", ".bin", "openvino"),
    ):
        _paired(files, main_ext, other_ext, backend, found, half)
    found.extend(ModelLayout("torch", f) for f in _one(files, (".pt", ".pth")))
    found.extend(ModelLayout("bigdl", f) for f in _one(files, (".model",)))
    found.extend(ModelLayout("onnx", f) for f in _one(files, (".onnx",)))

    names = ", ".join(f.name for f in files) or "none"
    if not found and half:
        raise IncompleteModelError("; ".join(half), path=str(root))
    if not found:
        raise ModelNotFoundError(
            f"no model found in {str(root)!r} (files: {names}); expected one of *.onnx, *.pt, "
            "*.pb, *.prototxt + *.caffemodel, *.xml + *.bin, *.model",
            path=str(root),
        )
    if len(found) > 1:
        models = ", ".join(f"{m.main.name} ({m.backend})" for m in found)
        raise AmbiguousModelError(
            f"more than one model in {str(root)!r}: {models}; keep one per directory or set "
            "model.path to the file",
            path=str(root),
        )
    return found[0]


def _paired(
    files: list[Path],
    main_ext: str,
    other_ext: str,
    backend: str,
    found: list[ModelLayout],
    half: list[str],
) -> None:
    """Pair ``name.main_ext`` with ``name.other_ext`` (or the only two); note what stays alone."""
    mains = _one(files, (main_ext,))
    others = {o.stem: o for o in _one(files, (other_ext,))}
    if len(mains) == 1 and len(others) == 1:
        found.append(ModelLayout(backend, mains[0], {other_ext[1:]: next(iter(others.values()))}))
        return
    for m in mains:
        partner = others.pop(m.stem, None)
        if partner is None:
            half.append(f"{backend} model is incomplete: {m.name} has no matching *{other_ext}")
        else:
            found.append(ModelLayout(backend, m, {other_ext[1:]: partner}))
    for o in others.values():
        half.append(f"{backend} model is incomplete: {o.name} has no matching *{main_ext}")
