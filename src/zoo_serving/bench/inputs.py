"""What ``zoo-serve bench`` sends: random tensors shaped like the served model's inputs (from
the description workers publish at ``keys.model``), encoded images, or saved arrays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ServerError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RANDOM_RECORDS = 8  # distinct random records a run cycles through


def random_inputs(
    info: dict[str, Any] | None,
    shape_hint: Sequence[int] | None = None,
    *,
    count: int = RANDOM_RECORDS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``count`` records of random tensors fitting every input of the model ``info`` describes.

    A free per-record dimension takes its size from ``shape_hint`` (the config's
    ``data.shape``) when that has the same rank; otherwise the size is unknown: an error.
    """
    if not info or not info.get("inputs"):
        raise ServerError(
            "the server published no model description (its workers write one when they load "
            "the model), so bench cannot shape random inputs; pass --npy FILE or --image PATH"
        )
    rng = np.random.default_rng(seed)
    shapes = {spec["name"]: _record_shape(spec, shape_hint) for spec in info["inputs"]}
    dtypes = {spec["name"]: np.dtype(spec["dtype"]) for spec in info["inputs"]}
    return [
        {name: _random(rng, shapes[name], dtypes[name]) for name in shapes} for _ in range(count)
    ]


def _record_shape(spec: dict[str, Any], hint: Sequence[int] | None) -> tuple[int, ...]:
    """The spec's shape without its batch dimension, free dimensions filled from ``hint``."""
    shape = [int(d) for d in spec["shape"][1:]]
    if all(d >= 0 for d in shape):
        return tuple(shape)
    fits = hint is not None and len(hint) == len(shape)
    if fits and all(d < 0 or d == h for d, h in zip(shape, hint or ())):
        return tuple(int(h) for h in hint or ())
    raise ConfigError(
        f"input {spec['name']!r} of the served model has free dimensions (per-record shape "
        f"{tuple(shape)}, -1 is free) and data.shape {tuple(hint or ())} does not fill them; "
        "pass --npy FILE with a real record, or --image PATH for an image model",
        key="--npy",
    )


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raise ConfigError(
        f"cannot make random values of dtype {dtype} for the served model; pass --npy FILE",
        key="--npy",
    )


def image_inputs(paths: Sequence[str], info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One record per image file; a directory gives every image file in it."""
    name = _single_input(info, "--image")
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(
                    f"--image {text}: no image files ({', '.join(IMAGE_SUFFIXES)}) in that "
                    "directory",
                    key="--image",
                    value=text,
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(
                f"--image {text}: no such file or directory", key="--image", value=text
            )
    return [{name: f.read_bytes()} for f in files]


def npy_inputs(paths: Sequence[str], info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Records from ``.npy`` files (one array: one record, or a stack of records along a
    leading axis) or ``.npz`` files (an array per input name)."""
    records: list[dict[str, Any]] = []
    for text in paths:
        try:
            loaded = np.load(text, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--npy {text}: cannot read it as a .npy or .npz file: {exc}",
                key="--npy",
                value=text,
            ) from None
        if isinstance(loaded, np.ndarray):
            arrays = {_single_input(info, "--npy"): loaded}
        else:
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
            _check_names(arrays, info, text)
        records.extend(_unstack(arrays, info))
    return records


def _unstack(arrays: dict[str, np.ndarray], info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Split arrays that carry one more dimension than the model's record into records."""
    ranks = {s["name"]: len(s["shape"]) - 1 for s in (info or {}).get("inputs", [])}
    stacked = all(name in ranks and arr.ndim == ranks[name] + 1 for name, arr in arrays.items())
    lengths = {len(arr) for arr in arrays.values()} if stacked else set()
    if stacked and len(lengths) == 1:
        return [{name: arr[i] for name, arr in arrays.items()} for i in range(lengths.pop())]
    return [arrays]


def _check_names(arrays: dict[str, np.ndarray], info: dict[str, Any] | None, path: str) -> None:
    names = [s["name"] for s in (info or {}).get("inputs", [])]
    if names and sorted(arrays) != sorted(names):
        raise ConfigError(
            f"--npy {path}: holds arrays {sorted(arrays)}; the served model's inputs are "
            f"{names}: save one array per input, by name (np.savez)",
            key="--npy",
            value=path,
        )


def _single_input(info: dict[str, Any] | None, option: str) -> str:
    """The name to send a lone payload under: the model's only input."""
    names = [s["name"] for s in (info or {}).get("inputs", [])]
    if len(names) > 1:
        raise ConfigError(
            f"{option}: the served model takes {len(names)} inputs ({', '.join(names)}); "
            "pass --npy with an .npz holding an array per input name",
            key=option,
        )
    return names[0] if names else "t"
