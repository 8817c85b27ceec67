"""``config.yaml`` -> frozen, validated config objects.

The seed's file (``model`` / ``data`` / ``params`` / ``log`` / ``spark``, every key optional but
``model.path``, an empty value meaning the default) loads unchanged. Extension keys live in the
same nesting. Every key is checked: an unknown key or a bad value raises :class:`ConfigError`
naming the key, the value and what is allowed.

Example::

    cfg = load_config({"model": {"path": "resnet"}, "params": {"batch_size": 8}})
    cfg.params.batch_size  # 8
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checks import BACKENDS, ENGINES, RUNNERS, check_shape
from .sections import (
    DataConfig,
    HttpConfig,
    LogConfig,
    ModelConfig,
    ParamsConfig,
    RayConfig,
    RepositoryConfig,
    SparkConfig,
)

__all__ = [
    "BACKENDS",
    "ENGINES",
    "RUNNERS",
    "Config",
    "DataConfig",
    "HttpConfig",
    "LogConfig",
    "ModelConfig",
    "ParamsConfig",
    "RayConfig",
    "RepositoryConfig",
    "SparkConfig",
    "check_shape",
    "default_config_text",
    "load_config",
]

_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "params": ParamsConfig,
    "log": LogConfig,
    "spark": SparkConfig,
    "ray": RayConfig,
    "http": HttpConfig,
    "repository": RepositoryConfig,
}


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole serving config; build it with :func:`load_config`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    source: str | None = None  # the file it was read from, if any

    def __post_init__(self) -> None:
        if not self.model.path and not self.model.repository:
            raise ConfigError(
                "model.path: expected the model directory, got nothing; set model.path in "
                "config.yaml (or model.repository for many models)",
                key="model.path",
                value=self.model.path,
            )
        if self.model.path and self.model.repository:
            raise ConfigError(
                "model.repository: set model.path (one model) or model.repository (many), "
                f"not both; got {self.model.path!r} and {self.model.repository!r}",
                key="model.repository",
                value=self.model.repository,
            )

    @property
    def work_dir(self) -> Path:
        """Where the pid file, logs and the embedded Redis live: ``log.dir``, else
        ``.zoo-serving`` beside the config file; a relative ``log.dir`` is relative to it."""
        base = Path(self.source).parent if self.source else Path.cwd()
        return base / (self.log.dir or ".zoo-serving")

    def replace(self, **dotted: Any) -> Config:
        """A copy with ``section.key`` values changed and validated.

        Example: ``cfg.replace(**{"params.runner": "ray"})``.
        """
        raw = to_dict(self)
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS:
                raise ConfigError(_unknown(key, list(_SECTIONS)), key=key, value=value)
            raw.setdefault(section, {})[name] = value
        return load_config(raw, source_path=self.source)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every section, fit for YAML and for shipping to remote workers."""
        return to_dict(self)


def _unknown(key: str, allowed: list[str]) -> str:
    return f"{key}: unknown key; allowed: {', '.join(allowed)}"


def to_dict(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(cfg, name))
        if "shape" in section:
            section["shape"] = ",".join(str(d) for d in section["shape"])
        for key, value in section.items():
            if isinstance(value, tuple):  # plain YAML lists, as a user writes them
                section[key] = list(value)
        out[name] = section
    return out


def _build_section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping of keys, got {raw!r}", key=name, value=raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(_unknown(dotted, sorted(fields)), key=dotted, value=value)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # the seed's empty value means "the default"
        values[key] = fields[key].metadata["check"](dotted, value)
    return cls(**values)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    *,
    source_path: str | None = None,
    **overrides: Any,
) -> Config:
    """Load and validate a config from a YAML path, a mapping or a :class:`Config`.

    Args:
        source: path of a ``config.yaml``, a mapping shaped like one, or a ready Config.
        source_path: with a mapping, the file it stands for (sets the default work dir).
        **overrides: ``section.key`` values applied on top, e.g. ``**{"params.runner": "ray"}``.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    if isinstance(source, Config):
        return source.replace(**overrides) if overrides else source
    path = source_path
    if source is None:
        raw: Any = {}
    elif isinstance(source, Mapping):
        raw = source
    else:
        path = os.fspath(source)
        raw = _read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {raw!r}", value=raw)
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(_unknown(str(key), list(_SECTIONS)), key=key, value=raw[key])
    sections = {name: _build_section(name, raw.get(name)) for name in _SECTIONS}
    if path:
        sections["model"] = _beside(sections["model"], os.path.dirname(os.path.abspath(path)))
    cfg = Config(**sections, source=os.path.abspath(path) if path else None)
    return cfg.replace(**overrides) if overrides else cfg


def _beside(model: ModelConfig, base: str) -> ModelConfig:
    """``model.path`` and ``model.repository`` given relative are relative to the config file,
    not to where the command runs (``zoo-serve -c other/config.yaml`` and the background server
    agree)."""
    for key in ("path", "repository"):
        value = getattr(model, key)
        if value and not os.path.isabs(value):
            model = dataclasses.replace(model, **{key: os.path.join(base, value)})
    return model


def _read_yaml(path: str) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"config: file {path!r} not found; write one with `zoo-serve init`", value=path
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path!r} is not valid YAML: {exc}", value=path) from None


def default_config_text(model_path: str = "/path/to/model") -> str:
    """The commented ``config.yaml`` that ``zoo-serve init`` writes."""
    lines = ["## zoo_serving config. Empty values take the default shown.", ""]
    for name, cls in _SECTIONS.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(str(d) for d in default) or "none"
            elif isinstance(default, bool):
                default = "y" if default else "n"
            lines.append(
                f"  # {f.metadata['doc']} (default: {default if default is not None else 'empty'})"
            )
            value = model_path if (name, f.name) == ("model", "path") else ""
            lines.append(f"  {f.name}: {value}".rstrip())
        lines.append("")
    return "\n".join(lines)
