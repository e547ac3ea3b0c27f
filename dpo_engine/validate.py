"""``dpo-engine validate``: report every bad row of a dataset without touching any store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .dataset import iter_records, open_dataset


@dataclass(frozen=True)
class ValidationReport:
    total: int
    valid: int
    invalid: int


def validate_dataset(path: str | Path, on_bad: Callable[[str], None],
                     image_root: str | Path | None = None, **caps) -> ValidationReport:
    """Stream the dataset; call ``on_bad`` with one line per bad row. Duplicate idx values are
    found through an 8-byte digest per row, so memory stays small for large datasets."""
    source = open_dataset(path, image_root, **caps)
    first_row: dict[bytes, int] = {}
    total = invalid = 0
    for rec in iter_records(source):
        total += 1
        error = rec.error
        if error is None:
            key = hashlib.blake2b(rec.idx.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            if key in first_row:
                error = f"duplicate idx {rec.idx!r} (first at row {first_row[key]})"
            else:
                first_row[key] = rec.row
        if error is not None:
            invalid += 1
            who = f"idx {rec.idx!r}" if rec.idx is not None else "no idx"
            on_bad(f"row {rec.row} ({rec.source}, {who}): {error}")
    return ValidationReport(total, total - invalid, invalid)
