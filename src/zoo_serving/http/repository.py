"""The KServe v2 / Triton model repository extension of the front door: list the
repository's models and their states, load and unload them (``repository.control: explicit``).

- ``POST /v2/repository/index`` (``{"ready": true}`` for ready ones only) ->
  ``[{"name", "version", "state", "reason"}]``, states ``READY``, ``LOADING``, ``UNLOADING``,
  ``UNAVAILABLE``;
- ``POST /v2/repository/models/<name>/load`` (``{"parameters": {"versions": [2]}}``, optional)
  and ``.../unload``: answer once every worker holds (or dropped) the model, within
  ``http.timeout_s``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from ..repository.api import Models
from .bodies import HttpError, bad


class RepositoryRoutes:
    """What the repository routes do, on the server's :class:`~..repository.api.Models`."""

    def __init__(self, models: Models, timeout_s: float) -> None:
        self.models = models
        self.timeout_s = timeout_s

    def index(self, body: Any) -> Any:
        """``[{"name", "version", "state", "reason"}]`` per model and version."""
        out = []
        for info in self.models.describe():
            reason = "; ".join(w.get("error") or "" for w in info.workers.values()).strip("; ")
            for number in [str(v) for v in info.versions] or [""]:
                out.append(
                    {
                        "name": info.name,
                        "version": number,
                        "state": _v2_state(info.state),
                        "reason": reason,
                    }
                )
        if isinstance(body, dict) and body.get("ready"):
            out = [m for m in out if m["state"] == "READY"]
        return out

    def _known(self, name: str) -> None:
        if self.models.control.entry(name) is None:
            names = ", ".join(sorted(self.models.control.index())) or "none"
            raise HttpError(404, f"no model {name!r} in the repository; it has {names}", "no_model")

    def load(self, body: Any, name: str) -> Any:
        params = body.get("parameters", {}) if isinstance(body, dict) else {}
        versions = params.get("versions") if isinstance(params, dict) else None
        if versions is not None and not (
            isinstance(versions, list) and all(isinstance(v, int) for v in versions)
        ):
            raise bad(f"parameters.versions: a list of version numbers, got {versions!r}")
        self._known(name)
        try:
            self.models.load(name, versions, wait_s=self.timeout_s)
        except ModelError as exc:  # a version it lacks, or a worker failed to load it
            raise HttpError(400, exc.message, exc.code) from None
        return {}

    def unload(self, body: Any, name: str) -> Any:
        self._known(name)
        self.models.unload(name, wait_s=self.timeout_s)
        return {}


def _v2_state(state: str) -> str:
    """Our model state as the repository extension names it."""
    return {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}.get(
        state, "UNAVAILABLE"
    )
