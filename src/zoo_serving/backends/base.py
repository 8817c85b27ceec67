"""The ``Model`` interface every backend implements."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InferenceError, ModelError, ZooServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model input or output; ``None`` marks a free dimension.

    The first dimension is the batch dimension. ``ranked`` is False where the framework does
    not know the rank (``shape`` is then a stand-in, and any shape fits).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    ranked: bool = True

    @property
    def record_shape(self) -> tuple[int | None, ...]:
        """The shape of one record: the spec's shape without the batch dimension."""
        return self.shape[1:]

    def fits(self, record_shape: tuple[int, ...]) -> bool:
        """Whether one record's actual shape is the described one (a free dim fits any size)."""
        want = self.record_shape
        return not self.ranked or (
            len(record_shape) == len(want)
            and all(w is None or w == got for w, got in zip(want, record_shape))
        )

    @property
    def max_batch(self) -> int | None:
        """A fixed batch dimension, or None when the model takes any batch size."""
        return self.shape[0] if self.shape else None


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """What a backend may need from the config."""

    threads: int = 0
    engine_type: str = "mklblas"
    batch_size: int = 4
    input_shape: tuple[int, ...] = (3, 224, 224)
    signature: str = "serving_default"


class Model(ABC):
    """A loaded model: specs of its inputs and outputs, and ``predict`` over a batch.

    Lifecycle: the constructor stores settings, :meth:`load` does the heavy work, :meth:`close`
    frees it; a Model is also a context manager. Subclasses implement :meth:`_load` and
    :meth:`_predict`; :meth:`predict` wraps framework failures in :class:`InferenceError`.

    Example::

        with load_model("models/resnet") as model:
            out = model.predict({model.inputs[0].name: batch})
    """

    #: backend name, as in the registry and ``model.backend``
    backend: str = ""
    #: layout of one decoded image: "CHW" (channels first) or "HWC"
    image_layout: str = "CHW"

    def __init__(self, path: str, options: ModelOptions | None = None) -> None:
        self.path = path
        self.options = options or ModelOptions()
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._loaded = False

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input specs, in the model's order."""
        self._require_loaded()
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output specs, in the model's order."""
        self._require_loaded()
        return self._outputs

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> Model:
        """Load the model from :attr:`path`; returns self."""
        if not self._loaded:
            try:
                self._load()
            except ZooServingError:
                raise
            except Exception as exc:  # the framework's own error types vary
                raise ModelError(
                    f"cannot load {self.backend} model {self.path}: {type(exc).__name__}: {exc}",
                    path=str(self.path),
                ) from exc
            self._loaded = True
            log.info("loaded %s model %s", self.backend, self.path)
        return self

    def close(self) -> None:
        """Free the framework's resources."""
        self._loaded = False

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model over a batch: input name -> array with a leading batch dimension.

        Returns output name -> array, in the model's output order, each with the batch first.
        """
        self._require_loaded()
        try:
            return self._predict(batch)
        except ModelError:
            raise
        except Exception as exc:  # the framework's own error types vary
            raise InferenceError(
                f"{self.backend} model failed: {type(exc).__name__}: {exc}"
            ) from exc

    def warmup(self, batch_size: int | None = None) -> None:
        """Run one batch of zeros so the first real batch pays no one-off costs.

        A free dimension takes its size from ``data.shape`` where the ranks match (C,H,W, or
        H,W,C for HWC models), as decoded images would: a 1x1 image fails a model that pools.
        """
        size = batch_size or self.options.batch_size
        batch = {}
        for spec in self.inputs:
            batch[spec.name] = np.zeros(
                (spec.max_batch or size, *self._warm_shape(spec)), dtype=spec.dtype
            )
        self.predict(batch)

    def _warm_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        rec = spec.record_shape
        fill = tuple(self.options.input_shape)
        if len(fill) == 3 and self.image_layout == "HWC":
            fill = (fill[1], fill[2], fill[0])
        if len(fill) != len(rec):
            fill = (1,) * len(rec)
        return tuple(d if d is not None else f for d, f in zip(rec, fill))

    def __enter__(self) -> Model:
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise ModelError(f"model {self.path} is not loaded; call load() first")

    @abstractmethod
    def _load(self) -> None:
        """Load the framework model and fill ``_inputs`` / ``_outputs``."""

    @abstractmethod
    def _predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the framework model."""
