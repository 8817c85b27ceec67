"""Runners: where and how many workers run. Found by name, imported lazily; a
``module:Class`` import string loads a third-party runner."""

from __future__ import annotations

import importlib

from ..config import Config
from ..errors import ConfigError
from .base import Runner

__all__ = ["REGISTRY", "Runner", "create_runner"]

#: runner name -> import string of its Runner class
REGISTRY: dict[str, str] = {
    "threads": "zoo_serving.runners.threads:ThreadsRunner",
    "processes": "zoo_serving.runners.processes:ProcessesRunner",
    "ray": "zoo_serving.runners.ray:RayRunner",
    "spark": "zoo_serving.runners.spark:SparkRunner",
}

_PLANNED: tuple[str, ...] = ()


def create_runner(config: Config, name: str | None = None) -> Runner:
    """The runner ``name`` (default ``params.runner``) for ``config``."""
    name = name or config.params.runner
    target = REGISTRY.get(name) or (name if ":" in name else None)
    if target is None:
        if name in _PLANNED:
            raise ConfigError(
                f"params.runner: the {name} runner is not in this release; expected one of "
                f"{', '.join(REGISTRY)}",
                key="params.runner",
                value=name,
            )
        raise ConfigError(
            f"params.runner: unknown runner {name!r}; expected one of {', '.join(REGISTRY)}",
            key="params.runner",
            value=name,
        )
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise ConfigError(
            f"params.runner: {target!r} is not a Runner subclass", key="params.runner"
        )
    return cls(config)
