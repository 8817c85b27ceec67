"""Load, unload and list the models of a running server, from wherever its Redis is reachable:
``Server.models``, ``zoo-serve models``, and the HTTP repository extension all call this.

Load and unload change the wanted state (:mod:`zoo_serving.broker.control`); every worker of
the server, under any runner, follows it, and reports its models' states
(``keys.model_states``), which :meth:`Models.wait` reads. They need
``repository.control: explicit`` (as Triton's load / unload need its explicit mode).

Example::

    models = Models(redis_client, "serving_stream")
    models.load("resnet", wait_s=60)          # every worker holds it, warmed up
    models.unload("small")                    # its workers drain; queued records stay queued
    [m.name for m in models.describe()]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..broker.control import ModelControl
from ..errors import ConfigError, ModelError, ServerError


@dataclass
class ModelInfo:
    """One model as the server has it: what the repository holds, what is wanted, and what each
    worker holds (worker name -> its state of the model)."""

    name: str
    stream: str
    default: bool
    versions: list[int]
    policy: str
    wanted: bool
    wanted_versions: list[int] | None
    problems: dict[str, str] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """``ready`` when every worker holds it, else the first other state a worker has;
        ``unloaded`` when no worker holds it."""
        states = [w.get("state") for w in self.workers.values()]
        if states and all(s == "ready" for s in states):
            return "ready"
        for s in ("failed", "loading", "unloading", "ready", "evicted"):
            if s in states:
                return s
        return "unloaded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "stream": self.stream,
            "default": self.default,
            "versions": self.versions,
            "policy": self.policy,
            "wanted": self.wanted,
            "wanted_versions": self.wanted_versions,
            "problems": self.problems,
            "workers": self.workers,
        }


class Models:
    """The models of the server whose ``data.stream`` is ``base``.

    Args:
        redis: a redis-py client of the server's Redis.
        base: the server's ``data.stream``.
    """

    def __init__(self, redis: Any, base: str) -> None:
        self.redis = redis
        self.base = base
        self.control = ModelControl(redis, base)

    def describe(self) -> list[ModelInfo]:
        """Every model of the repository, with its wanted and loaded states."""
        index = self.control.index()
        _gen, wanted = self.control.wanted()
        hosts = self.hosts()
        out = []
        for name, entry in sorted(index.items()):
            want = wanted.get(name, {})
            out.append(
                ModelInfo(
                    name=name,
                    stream=entry.get("stream", ""),
                    default=bool(entry.get("default")),
                    versions=sorted(int(v) for v in entry.get("versions", {})),
                    policy=entry.get("policy", "latest 1"),
                    wanted=bool(want.get("load")),
                    wanted_versions=want.get("versions"),
                    problems=entry.get("problems", {}),
                    workers={h: body[name] for h, body in hosts.items() if name in body},
                )
            )
        return out

    def get(self, name: str) -> ModelInfo:
        for info in self.describe():
            if info.name == name:
                return info
        raise ModelError(self._missing(name), model=name)

    def hosts(self) -> dict[str, dict[str, Any]]:
        """Each live worker's models (worker name -> model name -> state)."""
        return ModelControl(self.redis, self.base).hosts()

    def load(
        self, name: str, versions: list[int] | None = None, *, wait_s: float | None = None
    ) -> ModelInfo:
        """Have every worker load ``name`` (in ``versions``, else as its policy says); with
        ``wait_s``, wait until they hold it.

        Raises:
            ModelError: no such model, or a worker failed to load it (its reason).
            ConfigError: the server's ``repository.control`` is not ``explicit``.
        """
        entry = self._entry(name)
        if versions:
            missing = sorted(set(versions) - {int(v) for v in entry.get("versions", {})})
            if missing:
                raise ModelError(
                    f"model {name!r} has no version {', '.join(map(str, missing))}; it has "
                    f"{', '.join(sorted(entry.get('versions', {}))) or 'none'}",
                    model=name,
                )
        self.control.want(name, load=True, versions=versions)
        return self.wait(name, loaded=True, timeout_s=wait_s) if wait_s else self.get(name)

    def unload(self, name: str, *, wait_s: float | None = None) -> ModelInfo:
        """Have every worker unload ``name``: they stop reading its stream and drain; its
        queued records stay queued. With ``wait_s``, wait until none holds it."""
        self._entry(name)
        self.control.want(name, load=False)
        return self.wait(name, loaded=False, timeout_s=wait_s) if wait_s else self.get(name)

    def wait(self, name: str, *, loaded: bool, timeout_s: float) -> ModelInfo:
        """Wait until every live worker holds ``name`` (``loaded``) or none does.

        Raises:
            ModelError: a worker failed to load it.
            ServerError: not so within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.get(name)
            states = [w.get("state") for w in info.workers.values()]
            if loaded and "failed" in states:
                errors = [w.get("error") for w in info.workers.values() if w.get("error")]
                raise ModelError(f"model {name!r} failed to load: {errors[0]}", model=name)
            wanted = set(info.wanted_versions or [])
            done = (
                bool(states)
                and all(s == "ready" for s in states)
                and all(wanted <= set(w.get("versions", [])) for w in info.workers.values())
                if loaded
                else not any(s in ("ready", "loading", "unloading") for s in states)
            )
            if done:
                return info
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"model {name!r} not {'loaded' if loaded else 'unloaded'} by every worker "
                    f"within {timeout_s}s; workers: {info.workers or 'none'}",
                    model=name,
                )
            time.sleep(0.05)

    def _entry(self, name: str) -> dict[str, Any]:
        entry = self.control.entry(name)
        if entry is None:
            raise ModelError(self._missing(name), model=name)
        if entry.get("control") != "explicit":
            raise ConfigError(
                f"repository.control: load and unload need 'explicit', the server runs with "
                f"{entry.get('control')!r}",
                key="repository.control",
                value=entry.get("control"),
            )
        return entry

    def _missing(self, name: str) -> str:
        names = sorted(self.control.index())
        return (
            f"no model {name!r} in the repository of the server on stream {self.base!r}; it "
            f"has {', '.join(names) or 'none'}"
        )
