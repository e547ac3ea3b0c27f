"""Bring a dataset into the store: new rows are added, rows already there are checked."""

from __future__ import annotations

from dataclasses import dataclass

from .dataset import DatasetSource, iter_records
from .errors import DatasetChanged
from .store import Store

CHUNK = 256


@dataclass(frozen=True)
class IngestReport:
    total: int
    added: int
    invalid_added: int


def ingest(store: Store, source: DatasetSource, progress=None, *, rows_share_idx: bool = False,
           copy_images: bool = False) -> IngestReport:
    """Stream the dataset into ``store``. Rows ingested before are compared by content hash;
    a changed or missing row raises ``DatasetChanged``. Only new rows are decoded.

    An idx names one record, so a second row with it is invalid; with ``rows_share_idx`` (a
    DPO dataset, one row per pair, whose rows repeat their question's idx) each row is a record
    named by its idx and row number, and its idx is written out as given.

    The store keeps where each image lies in the dataset (``copy_images``: its bytes too); a
    dataset moved elsewhere unchanged has its records pointed at the new place."""
    known = store.record_count()
    stored = store.iter_row_hashes()
    try:
        chunk: list = []
        moves: list[tuple[str | None, int | None, int]] = []
        added = invalid = total = 0
        extra_names: dict[str, None] = {}
        for rec in iter_records(source, check_from=known):
            total += 1
            for name in rec.extra:
                extra_names.setdefault(name, None)
            if rec.row < known:
                rid, row_hash, image_file, image_pos = next(stored)
                if rid != rec.row or row_hash != rec.row_hash:
                    raise DatasetChanged(
                        f"row {rec.row} ({rec.source}) differs from the row ingested into this work dir before",
                        "pass --restart to start over, or use a new --work-dir")
                if image_file is not None and (image_file, image_pos) != (rec.image_file, rec.image_pos):
                    moves.append((rec.image_file, rec.image_pos, rid))
                    if len(moves) >= CHUNK:
                        store.relocate_images(moves)
                        moves = []
                continue
            if rows_share_idx and rec.idx is not None:
                rec.idx = f"{rec.idx} (row {rec.row})"
            chunk.append(rec)
            if len(chunk) >= CHUNK:
                invalid += store.insert_records(chunk, copy_images=copy_images)
                added += len(chunk)
                chunk = []
                if progress:
                    progress(added)
        if moves:
            store.relocate_images(moves)
        if chunk:
            invalid += store.insert_records(chunk, copy_images=copy_images)
            added += len(chunk)
        if total < known:
            raise DatasetChanged(
                f"the dataset now has {total} rows but {known} were ingested into this work dir",
                "pass --restart to start over, or use a new --work-dir")
    finally:
        stored.close()  # a refused dataset leaves the cursor unfinished
    store.note_extra_columns(extra_names)
    return IngestReport(total, added, invalid)
