"""Executors: where a batch runs, and which loaded model it runs on.

The runner decides *what* is pending and commits results (it alone writes to the store); an
executor decides *where* each batch runs and holds the loaded models: ``inprocess.py`` runs
batches here, ``workers.py`` in worker processes (one per device), ``ray_actors.py`` in Ray
actors (a local or remote Ray cluster).

An executor takes the batches of one stage as a stream and yields one ``BatchResult`` per
batch, in any order: commits are per record, so order never changes the output. It pulls the
next batch only when it can start it, which is where the runner honours pause requests.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..stage import Batch, Outputs

if TYPE_CHECKING:
    from ..roles import RoleModels


@dataclass
class BatchResult:
    batch: Batch
    outputs: Outputs
    seconds: float  # wall time of the batch
    model_seconds: float = 0.0  # of which inside model calls


@dataclass
class WorkerView:
    """One worker as its executor sees it, updated as it works; the run's heartbeat copies
    these into the store for ``status`` and the dashboard."""

    name: str
    device: str
    pid: int | None = None
    host: str = field(default_factory=socket.gethostname)
    state: str = "starting"  # starting, loading, working, idle, replaced, stopped
    stage: str | None = None
    started: float = field(default_factory=time.time)
    items: int = 0
    busy: float = 0.0  # seconds spent on batches

    def begin(self, stage: str) -> None:
        self.state, self.stage = "working", stage

    def finish(self, items: int, seconds: float) -> None:
        self.state, self.items, self.busy = "idle", self.items + items, self.busy + seconds


class Deaths:
    """The records in flight when a worker (a process or a Ray actor) died, counted per record.

    A dead worker's batch is redone one record at a time, so that a record that kills its
    worker (by running it out of memory, say) dies alone; a record whose worker died twice while
    it was in flight, the second time alone, fails with the reason and the run goes on (the
    next run retries it). The worker itself is replaced by the executor."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def lost(self, batch: Batch, worker: str, cause: str) -> tuple[list[Batch], BatchResult | None]:
        """What to do with the batch ``worker`` died on: batches to redo (last first, for a
        stack), or a result that fails its one record."""
        for rid in batch.rids:
            self.counts[rid] = self.counts.get(rid, 0) + 1
        if len(batch.rids) == 1 and self.counts[batch.rids[0]] >= 2:
            reason = (f"{worker} died while this record was in flight, {self.counts[batch.rids[0]]} times, "
                      f"the last time alone ({cause})")
            return [], BatchResult(batch, Outputs(failed={batch.rids[0]: reason}), 0.0)
        return [batch.subset([rid]) for rid in reversed(batch.rids)], None


def this_process(device: str) -> WorkerView:
    return WorkerView("main", device, os.getpid(), state="idle")


class Executor(Protocol):
    load_seconds: float  # time spent opening models
    workers: list[WorkerView]

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]: ...

    def close(self) -> None: ...


def process_contained(stage: Any, batch: Batch, model: Any, config: Any) -> Outputs:
    """Run a batch; if it raises, run its records one at a time so that only the record(s)
    at fault fail, each with its error, and the others still get done. ``Outputs.split``
    says that this happened, and why, so the run can say so (a batch that fails whole every
    time means a model that cannot batch: a silent slowdown otherwise)."""
    try:
        return stage.process(batch, model, config)
    except Exception as exc:  # noqa: BLE001 - any failure of one batch is contained
        error = f"{type(exc).__name__}: {exc}"[:500]
        if len(batch.rids) == 1:
            return Outputs(failed={batch.rids[0]: error})
    merged = Outputs()
    for rid in batch.rids:
        merged.merge(process_contained(stage, batch.subset([rid]), model, config))
    merged.split = f"a batch of {len(batch.rids)} records failed ({error}); they ran one at a time"
    return merged


class HeldModel:
    """The one model a worker process or an actor holds between batches: opened when a batch
    needs it and kept while the next stages' roles map to the same checkpoint (``sample`` and
    ``logps_instruct`` share the instruct model), so each process loads each model once."""

    def __init__(self, models: RoleModels):
        self.models = models
        self._key: Any = None
        self._model: Any = None

    def process(self, stage: Any, batch: Batch, config: Any) -> tuple[Outputs, float, float, float]:
        """Run a batch on its stage's model; return the outputs, the batch's wall seconds,
        those spent inside model calls, and the seconds spent opening the model first."""
        load = 0.0
        use = getattr(stage, "model_use", "generate")
        wanted = self.models.key(stage.model_role, use) if stage.model_role else None
        if wanted != self._key:
            self.close()
            t0 = time.perf_counter()
            self._model = self.models.open(stage.model_role, use) if wanted else None
            self._key, load = wanted, time.perf_counter() - t0
        model = self._model
        busy = model.model_seconds if model is not None else 0.0
        t0 = time.perf_counter()
        outputs = process_contained(stage, batch, model, config)
        seconds = time.perf_counter() - t0
        in_model = model.model_seconds - busy if model is not None else 0.0
        return outputs, seconds, in_model, load

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model, self._key = None, None
