"""The model repository: which models a server serves, which of their versions, and with what
settings (see ``docs/models.md``).

- :mod:`.layout`: ``<repository>/<name>/<version>/<files>`` on disk, complete and stable
  versions, ``model.path`` as a repository of one;
- :mod:`.settings`: per-model settings (``model.yaml`` over ``config.yaml``) and version
  policies.
"""

from __future__ import annotations

from .layout import ModelVersion, RepoModel, StableScanner, scan, single_model
from .settings import ModelSettings, VersionPolicy

__all__ = [
    "ModelSettings",
    "ModelVersion",
    "RepoModel",
    "StableScanner",
    "VersionPolicy",
    "scan",
    "single_model",
]
