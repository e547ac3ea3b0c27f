"""The run store: ``WORK_DIR/engine.db``. The only package that speaks SQL.

SQLite in WAL mode, through the standard library's ``sqlite3``. Every input record is a row
of ``record`` (with where its image lies in the dataset and the image's hash, not its bytes:
``dpo_engine.images`` reads it back); each record's progress through each stage is a row of
``stage_state`` (status, the settings hash it was computed under, attempts, error, timings);
each kind of result has
its own table. A batch's outputs and its records' new state commit in one transaction, so a
crash loses at most the batch in flight. Readers (``status``, the dashboard) use their own
connections and never block the writer.

``Store`` is one class put together from its parts, one module each:

* ``schema``: the schema and its migrations, opening the file, transactions (``StoreBase``);
* ``writes``: the run's settings, input records, batch commits, the run-scope filter's commit;
* ``reads``: the work queue, batch reads, results, one record in full, status counts;
* ``live``: the live process's heartbeat, device samples, metrics, control requests;
* ``leases``: which process holds which records, and each process's workers;
* ``rows``: the frozen rows the read API returns.

The store stays light to import (no numpy, pandas or pyarrow), so ``status`` and the
dashboard start fast.
"""

from __future__ import annotations

from .leases import StoreLeases
from .live import CONTROL_ACTIONS, StoreLive
from .reads import StoreReads
from .rows import (AnswerDetail, DeviceSample, Failure, InvalidRecord, MetricRow, ProcessInfo, RecordCounts,
                   RecordDetail, RunInfo, StageCounts, StatusSnapshot, WorkerRow)
from .schema import DB_NAME, MIGRATIONS, OUTPUT_TABLES, StoreBase
from .writes import StoreWrites

__all__ = [
    "AnswerDetail", "CONTROL_ACTIONS", "DB_NAME", "DeviceSample", "Failure", "InvalidRecord", "MIGRATIONS",
    "MetricRow", "OUTPUT_TABLES", "ProcessInfo", "RecordCounts", "RecordDetail", "RunInfo", "StageCounts",
    "StatusSnapshot", "Store", "StoreBase", "WorkerRow",
]


class Store(StoreWrites, StoreReads, StoreLive, StoreLeases):
    """One work dir's store: open it with ``Store.in_work_dir(work_dir)``.

    Holds one ``sqlite3`` connection, ``conn``, in autocommit mode; every write is one
    ``transaction()``."""
