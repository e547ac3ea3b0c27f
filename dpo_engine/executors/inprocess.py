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
from . import BatchResult, HeldModel, WorkerView, process_contained, this_process


class InProcessExecutor:
    def __init__(self, models: RoleModels | None = None):
        self.held = HeldModel(models) if models is not None else None
        self.load_seconds = 0.0
        self.workers: list[WorkerView] = [this_process(models.config.device if models else "cpu")]

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]:
        view = self.workers[0]
        for batch in batches:
            view.begin(stage.name)
            if self.held is not None:
                outputs, seconds, in_model, load = self.held.process(stage, batch, config)
                self.load_seconds += load
            elif stage.model_role is None:
                t0 = time.perf_counter()
                outputs, in_model = process_contained(stage, batch, None, config), 0.0
                seconds = time.perf_counter() - t0
            else:
                raise RuntimeError(f"stage {stage.name} needs the {stage.model_role} model but this executor "
                                   "was given no models")
            view.finish(len(batch.rids), seconds)
            yield BatchResult(batch, outputs, seconds, in_model)

    def close(self) -> None:
        if self.held is not None:
            self.held.close()
