"""The in-process executor: batches run one after another in this process, on one device.

It opens a stage's model only when the stage has a batch to run, and keeps it while the next
stages use the same one (``sample`` and ``logps_instruct`` share the instruct model).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..roles import RoleModels
from ..stage import Batch
from . import BatchResult, process_contained


class InProcessExecutor:
    def __init__(self, models: RoleModels | None = None):
        self.models = models
        self.load_seconds = 0.0
        self._key: Any = None
        self._model: Any = None

    def _model_for(self, role: str | None) -> Any:
        if role is None:
            return None
        if self.models is None:
            raise RuntimeError(f"a stage needs the {role} model but this executor was given no models")
        key = self.models.key(role)
        if key != self._key:
            self.close()
            t0 = time.perf_counter()
            self._model = self.models.open(role)
            self.load_seconds += time.perf_counter() - t0
            self._key = key
        return self._model

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]:
        model, loaded = None, False
        for batch in batches:
            if not loaded:  # only a stage with pending work loads its model
                model, loaded = self._model_for(stage.model_role), True
            busy = model.model_seconds if model is not None else 0.0
            t0 = time.perf_counter()
            outputs = process_contained(stage, batch, model, config)
            seconds = time.perf_counter() - t0
            in_model = model.model_seconds - busy if model is not None else 0.0
            yield BatchResult(batch, outputs, seconds, in_model)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model, self._key = None, None
