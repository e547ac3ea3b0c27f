"""Executors: where a batch runs, and which loaded model it runs on.

The runner decides *what* is pending and commits results (it alone writes to the store); an
executor decides *where* each batch runs and holds the loaded models: ``inprocess.py`` runs
batches here, ``workers.py`` in worker processes (one per device); Ray would be one more module
behind the same protocol.

An executor takes the batches of one stage as a stream and yields one ``BatchResult`` per
batch, in any order: commits are per record, so order never changes the output. It pulls the
next batch only when it can start it, which is where the runner honours pause requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..stage import Batch, Outputs


@dataclass
class BatchResult:
    batch: Batch
    outputs: Outputs
    seconds: float  # wall time of the batch
    model_seconds: float = 0.0  # of which inside model calls


class Executor(Protocol):
    load_seconds: float  # time spent opening models

    def map(self, stage: Any, batches: Iterable[Batch], config: Any) -> Iterator[BatchResult]: ...

    def close(self) -> None: ...


def process_contained(stage: Any, batch: Batch, model: Any, config: Any) -> Outputs:
    """Run a batch; if it raises, run its records one at a time so that only the record(s)
    at fault fail, each with its error, and the others still get done."""
    try:
        return stage.process(batch, model, config)
    except Exception as exc:  # noqa: BLE001 - any failure of one batch is contained
        if len(batch.rids) == 1:
            return Outputs(failed={batch.rids[0]: f"{type(exc).__name__}: {exc}"[:500]})
    merged = Outputs()
    for rid in batch.rids:
        merged.merge(process_contained(stage, batch.subset([rid]), model, config))
    return merged
