"""The loaded versions of one worker's model, and which one a record runs on.

A record names a version (``version`` field) or runs on the *current* one; a new version is
loaded and warmed up beside the served ones (:meth:`Versions.load`), becomes current between
two batches (:meth:`Versions.switch`), and the old one is retired once no batch runs on it
(:meth:`Versions.retire`). The dict of versions is replaced whole on every change, so a reader
never sees it half-updated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..backends import Model
from ..config import Config
from ..errors import VersionUnavailableError
from ..observe.stats import WorkerStats
from .batch import BatchCore, load_served_model, preprocessor
from .preprocess import Preprocessor


@dataclass(eq=False)
class Version:
    """One loaded version of a worker's model."""

    number: int
    model: Model
    core: BatchCore
    preprocess: Preprocessor
    running: int = 0  # batches on it now: a version is retired only when none is


class Versions:
    """The versions of model ``name`` one worker holds.

    Args:
        name: the model's name, given in every answer.
        config: the worker's config (its ``model.path`` is the first version's).
        stats: the worker's counters, which every version's batch core updates.
        current: the number of the version records that name none run on.
    """

    def __init__(self, name: str, config: Config, stats: WorkerStats, current: int) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.current = current
        self._all: dict[int, Version] = {}

    def __contains__(self, number: object) -> bool:
        return number in self._all

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._all))

    def get(self, number: int | None) -> Version | None:
        return self._all.get(self.current if number is None else number)

    def numbers(self) -> list[int]:
        return sorted(self._all)

    def add(self, number: int, model: Model) -> Version:
        """Serve ``model`` (loaded and warmed up) as version ``number``."""
        cfg = self.config
        core = BatchCore(model, cfg.params.top_n, self.stats, (self.name, number))
        version = Version(number, model, core, preprocessor(model, cfg))
        self._all = {**self._all, number: version}
        return version

    def load(self, number: int, path: str) -> Version:
        """Load and warm up version ``number`` from ``path`` beside the ones served (records
        keep running meanwhile); :meth:`switch` makes it current."""
        model = load_served_model(self.config.replace(**{"model.path": path}))
        return self.add(number, model)

    def switch(self, number: int) -> Version:
        """Records that name no version run on ``number`` from the next batch on."""
        version = self._all[number]
        self.current = number
        return version

    def retire(self, number: int) -> bool:
        """Drop version ``number`` once no batch runs on it; True when it is gone."""
        version = self._all.get(number)
        if version is None:
            return True
        if version.running or number == self.current:
            return False
        self._all = {n: v for n, v in self._all.items() if n != number}
        version.model.close()
        return True

    def resolve(self, requested: int | None) -> tuple[int, Preprocessor]:
        """The version a record runs on and the decoder of its inputs.

        Raises:
            VersionUnavailableError: the record names a version not served.
        """
        number = self.current if requested is None else requested
        version = self._all.get(number)
        if version is None:
            raise VersionUnavailableError(
                f"model {self.name!r} serves version(s) "
                f"{', '.join(str(v) for v in sorted(self._all))}; version {requested} is "
                "not served; leave the version out for the newest"
            )
        return number, version.preprocess

    def close(self) -> None:
        """Free every version's model."""
        for version in self._all.values():
            version.model.close()
        self._all = {}
