"""The server's side of the repository: scan it, tell workers what there is and what to hold.

:class:`RepositoryController` writes the model index (what the repository has: each model's
stream, versions and settings) and the wanted state (what workers of every runner should load)
through :class:`~zoo_serving.broker.control.ModelControl`; workers follow them. With
``repository.control``:

- ``static``: scanned once at start; every model is wanted in the versions its policy names;
- ``poll``: scanned again every ``repository.poll_s``; versions that appear complete and stand
  still are loaded, versions and models that go away are unloaded;
- ``explicit``: the index is kept fresh the same way, but only ``repository.load`` (at start)
  and load / unload requests (:mod:`.api`) change what is wanted.

``model.path`` is a repository of one model, version 1, always wanted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from .. import keys
from ..broker.control import ModelControl
from ..config import Config
from ..errors import ConfigError
from .layout import RepoModel, StableScanner, scan, served_name, single_model
from .settings import ModelSettings

log = logging.getLogger(__name__)


def default_model(config: Config, names: list[str]) -> str | None:
    """The model served on ``data.stream``: ``repository.default``, else the only one."""
    if config.repository.default:
        return config.repository.default
    return names[0] if len(names) == 1 else None


def stream_of(config: Config, name: str, default: str | None) -> str:
    """Model ``name``'s input stream: ``data.stream`` for the default model."""
    base = config.data.stream
    return base if name == default else keys.model_stream(base, name)


def index_entry(config: Config, model: RepoModel, default: str | None) -> dict[str, Any]:
    """What the index says of one model."""
    settings = dataclasses.asdict(model.settings)
    settings["versions"] = model.settings.versions.text()
    settings["shape"] = ",".join(str(d) for d in model.settings.shape)
    return {
        "stream": stream_of(config, model.name, default),
        "default": model.name == default,
        "versions": {
            str(n): {"path": str(v.path), "backend": v.backend} for n, v in model.versions.items()
        },
        "policy": model.settings.versions.text(),
        "control": config.repository.control if config.model.repository else "static",
        "settings": settings,
        "problems": model.problems,
    }


class RepositoryController:
    """Scans the repository and keeps the index and wanted state in Redis up to date.

    Args:
        config: the server's config.
        redis: a redis-py client of the server's Redis.
    """

    def __init__(self, config: Config, redis: Any) -> None:
        self.config = config
        self.control = ModelControl(redis, config.data.stream)
        self.models: dict[str, RepoModel] = {}
        self._scanner: StableScanner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RepositoryController:
        """Scan, publish the index and the wanted state; keep following the folder when the
        control is ``poll`` or ``explicit``."""
        cfg = self.config
        self.models = self._scan_first()
        default = default_model(cfg, sorted(self.models))
        if cfg.repository.default and cfg.repository.default not in self.models:
            raise ConfigError(
                f"repository.default: no model {cfg.repository.default!r} in the repository; "
                f"it has {', '.join(sorted(self.models)) or 'none'}",
                key="repository.default",
                value=cfg.repository.default,
            )
        self._publish()
        if cfg.repository.control == "explicit":
            unknown = [m for m in cfg.repository.load if m not in self.models]
            if unknown:
                raise ConfigError(
                    f"repository.load: no model {', '.join(map(repr, unknown))} in the "
                    f"repository; it has {', '.join(sorted(self.models)) or 'none'}",
                    key="repository.load",
                    value=list(cfg.repository.load),
                )
            self.control.want_all({m: {"load": True} for m in cfg.repository.load})
        else:
            self.control.want_all({m: {"load": True} for m in self.models})
        for line in _lines(self.models, default):
            log.info("%s", line)
        if cfg.model.repository and cfg.repository.control in ("poll", "explicit"):
            self._thread = threading.Thread(target=self._poll, name="repository", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _scan_first(self) -> dict[str, RepoModel]:
        cfg = self.config
        if not cfg.model.repository:
            return single_model(cfg, served_name(cfg))
        defaults = ModelSettings.from_config(cfg)
        if cfg.repository.control == "static":
            return scan(cfg.model.repository, defaults)
        # what is there at start counts as complete; later arrivals must stand still first
        first = scan(cfg.model.repository, defaults)
        self._scanner = StableScanner(cfg.model.repository, defaults)
        self._scanner.scan()
        return first

    def _publish(self) -> None:
        default = default_model(self.config, sorted(self.models))
        self.control.publish_index(
            {name: index_entry(self.config, m, default) for name, m in self.models.items()}
        )

    def _poll(self) -> None:
        assert self._scanner is not None
        while not self._stop.wait(self.config.repository.poll_s):
            try:
                self._rescan()
            except Exception as exc:  # a folder mid-copy, Redis away: the next scan retries
                log.warning("scanning the model repository failed: %s", exc)

    def _rescan(self) -> None:
        assert self._scanner is not None
        found = self._scanner.scan()
        # a version seen before stays until its folder goes; new ones count once stable
        merged: dict[str, RepoModel] = {}
        for name, model in found.items():
            old = self.models.get(name)
            versions = dict(model.versions)
            if old is not None:
                for number, version in old.versions.items():
                    if number not in versions and version.path.is_dir():
                        versions[number] = version
            merged[name] = dataclasses.replace(model, versions=versions)
        if _summary(merged) == _summary(self.models):
            return
        added = sorted(set(merged) - set(self.models))
        gone = sorted(set(self.models) - set(merged))
        self.models = merged
        self._publish()
        if self.config.repository.control == "poll":
            for name in added:
                self.control.want(name, load=True)
            for name in gone:
                self.control.want(name, load=False)
        log.info(
            "model repository changed: %s",
            "; ".join(_lines(merged, default_model(self.config, sorted(merged)))),
        )


def _summary(models: dict[str, RepoModel]) -> dict[str, list[int]]:
    return {name: sorted(m.versions) for name, m in models.items()}


def _lines(models: dict[str, RepoModel], default: str | None) -> list[str]:
    out = []
    for name, model in sorted(models.items()):
        served = sorted(model.wanted_versions())
        mark = " (default)" if name == default else ""
        out.append(f"model {name}{mark}: versions {sorted(model.versions)}, serving {served}")
    return out
