"""What a model of the repository is served with: the per-model keys of ``config.yaml``,
overridden by the model's own ``models/<name>/model.yaml``, and its version policy.

Example ``models/resnet/model.yaml``::

    batch_size: 8
    top_n: 5
    weight: 2          # twice the CPU share of a weight-1 model when both have records waiting
    pinned: y          # never evicted under params.memory_budget
    memory: 300m       # an estimate used before the model was measured
    versions: latest 2 # or: all, or a list like [1, 3]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..config.checks import (
    ENGINES,
    check_backend,
    check_bool,
    check_shape,
    check_size,
    check_str,
    choice_checker,
    float_checker,
    int_checker,
)
from ..errors import ConfigError

MODEL_FILE = "model.yaml"


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served: the ``latest`` N, ``all``, or ``specific``
    ones (Triton's and OVMS's three policies)."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, key: str, value: Any) -> VersionPolicy:
        """``latest``, ``latest 2``, ``all``, ``3``, ``[1, 3]`` or ``1,3``."""
        if isinstance(value, (list, tuple)):
            return cls("specific", versions=_versions(key, value))
        if isinstance(value, int) and not isinstance(value, bool):
            return cls("specific", versions=_versions(key, [value]))
        text = str(value).strip().lower()
        if text == "all":
            return cls("all")
        parts = text.split()
        if parts and parts[0] == "latest":
            if len(parts) == 1:
                return cls("latest", 1)
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 0:
                return cls("latest", int(parts[1]))
        elif text and all(p.strip().isdigit() for p in text.split(",")):
            return cls("specific", versions=_versions(key, text.split(",")))
        raise ConfigError(
            f"{key}: expected 'latest', 'latest N', 'all' or a list of versions like [1, 3], "
            f"got {value!r}",
            key=key,
            value=value,
        )

    def select(self, available: Set[int]) -> set[int]:
        """The versions to serve out of those ``available``."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions) & set(available)
        return set(sorted(available)[-self.count :]) if available else set()

    def text(self) -> str:
        if self.kind == "specific":
            return ",".join(str(v) for v in self.versions)
        return "all" if self.kind == "all" else f"latest {self.count}"


def _versions(key: str, items: Any) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(str(v).strip()) for v in items}))
    except ValueError:
        raise ConfigError(
            f"{key}: versions are positive integers, got {items!r}", key=key, value=items
        ) from None
    if not out or min(out) < 1:
        raise ConfigError(f"{key}: versions are positive integers, got {items!r}", key=key)
    return out


def _opt(check: Any, doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The per-model keys: from ``config.yaml`` (params / data / model), each one overridable
    in ``models/<name>/model.yaml`` under the same name (``shape`` for ``data.shape``)."""

    batch_size: int = _opt(int_checker(1), "largest batch the model runs", 4)
    max_wait_ms: float = _opt(float_checker(0.0), "longest wait for a batch to fill", 5.0)
    top_n: int = _opt(int_checker(0), "classes per answer; 0 returns the output tensor", 1)
    shape: tuple[int, ...] = _opt(check_shape, "input shape without batch", (3, 224, 224))
    engine_type: str = _opt(choice_checker(ENGINES), "execution engine", "mklblas")
    threads: int = _opt(int_checker(0), "framework threads; 0: the cores shared out", 0)
    max_queue_len: int = _opt(int_checker(0), "bound on unprocessed records; 0: none", 0)
    deadline_s: float = _opt(
        float_checker(0.0), "records older than this get deadline_exceeded; 0: none", 0.0
    )
    batch_timeout_s: float = _opt(float_checker(0.0), "time limit of one batch; 0: none", 0.0)
    weight: float = _opt(float_checker(0.001), "share of the execution slots", 1.0)
    pinned: bool = _opt(check_bool, "never evicted under params.memory_budget", False)
    memory: int = _opt(check_size, "memory estimate before the model is measured; 0: none", 0)
    versions: VersionPolicy = _opt(VersionPolicy.parse, "versions served", VersionPolicy())
    backend: str | None = _opt(check_backend, "framework; detected when empty", None)
    signature: str = _opt(check_str, "TensorFlow SavedModel signature", "serving_default")

    @classmethod
    def from_config(cls, config: Config) -> ModelSettings:
        """The defaults every model of ``config``'s repository starts from."""
        p, d, m = config.params, config.data, config.model
        return cls(
            batch_size=p.batch_size,
            max_wait_ms=p.max_wait_ms,
            top_n=p.top_n,
            shape=d.shape,
            engine_type=p.engine_type,
            threads=p.threads,
            max_queue_len=d.max_queue_len,
            batch_timeout_s=float(getattr(p, "batch_timeout_s", 0.0) or 0.0),
            backend=m.backend,
            signature=m.signature,
        )

    def overridden(self, raw: Mapping[str, Any], where: str) -> ModelSettings:
        """These settings with ``raw`` (a model.yaml mapping) applied and checked; ``where``
        names the file in errors."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{where}: {key}"
            if key not in fields:
                raise ConfigError(
                    f"{dotted}: unknown key; allowed: {', '.join(sorted(fields))}",
                    key=str(key),
                    value=value,
                )
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            values[key] = fields[key].metadata["check"](dotted, value)
        return dataclasses.replace(self, **values)


def read_settings(model_dir: Path, defaults: ModelSettings) -> ModelSettings:
    """``defaults`` with ``model_dir/model.yaml`` applied, if there is one.

    Raises:
        ConfigError: the file is not YAML, not a mapping, or has a bad key or value.
    """
    path = model_dir / MODEL_FILE
    if not path.is_file():
        return defaults
    import yaml

    where = f"{model_dir.name}/{MODEL_FILE}"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}", value=str(path)) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}", value=raw)
    return defaults.overridden(raw, where)
