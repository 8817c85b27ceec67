"""The model repository on disk: ``<repository>/<name>/<version>/<files>`` (Triton's and OVMS's
layout), numeric versions, the framework detected per version, an optional
``<name>/model.yaml`` of per-model settings.

A version folder counts once a whole model is detected in it. For ``repository.control: poll``
a folder must also be *stable*: the same files with the same sizes and modification times in
two scans in a row, so a model still being copied in is never loaded half-written.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.detect import detect_model
from ..config import Config
from ..errors import ConfigError, ModelError
from .settings import ModelSettings, VersionPolicy, read_settings

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # a model name is part of its stream's name

Signature = tuple[tuple[str, int, int], ...]  # (relative path, size, mtime ns) of every file


@dataclass(frozen=True)
class ModelVersion:
    """One complete version folder: where it is, its backend, and what its files look like."""

    name: str
    version: int
    path: Path
    backend: str
    signature: Signature = ()


@dataclass(frozen=True)
class RepoModel:
    """One model of the repository: its settings, its complete versions, and what in its
    folder cannot be served and why (a half-copied version, a bad model.yaml)."""

    name: str
    path: Path
    settings: ModelSettings
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def wanted_versions(self) -> set[int]:
        """The versions its policy serves out of the complete ones."""
        return self.settings.versions.select(set(self.versions))


def signature(path: Path) -> Signature:
    """Every file under ``path`` with its size and modification time."""
    out = []
    for root, _dirs, files in os.walk(path):
        for name in sorted(files):
            full = Path(root) / name
            try:
                st = full.stat()
            except OSError:  # removed while we looked: not stable
                out.append((str(full.relative_to(path)), -1, -1))
                continue
            out.append((str(full.relative_to(path)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def scan(root: str | os.PathLike[str], defaults: ModelSettings) -> dict[str, RepoModel]:
    """The models under ``root``, by name.

    Raises:
        ConfigError: ``root`` is not a directory.
    """
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(
            f"model.repository: {str(base)!r} is not a directory; it holds one folder per "
            "model, each with numeric version folders (models/<name>/<version>/<files>)",
            key="model.repository",
            value=str(base),
        )
    models: dict[str, RepoModel] = {}
    for entry in sorted(base.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not NAME_RE.match(entry.name):
            log.warning(
                "model folder %r skipped: a model name holds letters, digits, '_', '.' and '-'",
                entry.name,
            )
            continue
        models[entry.name] = scan_model(entry, defaults)
    return models


def scan_model(folder: Path, defaults: ModelSettings) -> RepoModel:
    """One model folder: its settings and complete versions."""
    problems: dict[str, str] = {}
    try:
        settings = read_settings(folder, defaults)
    except ConfigError as exc:
        settings = defaults
        problems["model.yaml"] = str(exc)
    versions: dict[int, ModelVersion] = {}
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir():
            continue
        if not sub.name.isdigit() or int(sub.name) < 1:
            problems[sub.name] = "not a version folder (versions are positive integers)"
            continue
        try:
            layout = detect_model(sub)
        except ModelError as exc:
            problems[sub.name] = exc.message or str(exc)
            continue
        version = int(sub.name)
        backend = settings.backend or layout.backend
        versions[version] = ModelVersion(folder.name, version, sub, backend, signature(sub))
    return RepoModel(folder.name, folder, settings, versions, problems)


def served_name(config: Config) -> str:
    """The name of the model ``model.path`` serves: ``http.model_name``, else the name of the
    model file (without suffix) or directory."""
    if config.http.model_name:
        return config.http.model_name
    path = Path(config.model.path or "model")
    return path.stem if path.suffix else path.name


def single_model(config: Config, name: str) -> dict[str, RepoModel]:
    """``model.path`` as a repository of one model, version 1, with the config's settings."""
    path = Path(config.model.path or "")
    settings = ModelSettings.from_config(config)
    layout = detect_model(path)
    version = ModelVersion(name, 1, path, settings.backend or layout.backend)
    return {name: RepoModel(name, path, settings, {1: version})}


class StableScanner:
    """Scans a repository again and again, and says which versions stood still since the
    previous scan (``repository.control: poll`` acts only on those)."""

    def __init__(self, root: str | os.PathLike[str], defaults: ModelSettings) -> None:
        self.root = root
        self.defaults = defaults
        self._seen: dict[tuple[str, int], Signature] = {}

    def scan(self) -> dict[str, RepoModel]:
        """The repository with only its stable versions (complete in two scans in a row, the
        same files, sizes and times in both)."""
        current = scan(self.root, self.defaults)
        seen: dict[tuple[str, int], Signature] = {}
        out: dict[str, RepoModel] = {}
        for name, model in current.items():
            stable: dict[int, ModelVersion] = {}
            problems = dict(model.problems)
            for number, version in model.versions.items():
                seen[(name, number)] = version.signature
                if self._seen.get((name, number)) == version.signature:
                    stable[number] = version
                else:
                    problems[str(number)] = "still changing; waiting for it to stand still"
            out[name] = RepoModel(name, model.path, model.settings, stable, problems)
        self._seen = seen
        return out


def describe(models: Mapping[str, RepoModel]) -> list[str]:
    """One line per model: its versions, the ones served, and its problems."""
    lines = []
    for name, model in models.items():
        served = sorted(model.wanted_versions())
        policy: VersionPolicy = model.settings.versions
        line = f"{name}: versions {sorted(model.versions) or '-'}, serving {served or '-'}"
        line += f" ({policy.text()})"
        for what, why in model.problems.items():
            line += f"; {what}: {why}"
        lines.append(line)
    return lines
