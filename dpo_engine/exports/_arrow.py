"""What the export formats and column sets share: Arrow types, HF ``features`` helpers, the
atomic parquet writer, and the two shapes a format and a column set take."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    from ..store import Store

Fields = list[tuple[str, pa.DataType]]

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
MESSAGE_TYPE = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
JSON_TO_ARROW = {"integer": pa.int64(), "real": pa.float64(), "text": pa.string(), "bool": pa.bool_()}
_ARROW_TO_VALUE = {pa.int64(): "int64", pa.float64(): "float64", pa.string(): "string", pa.bool_(): "bool"}


class ExportFormat(Protocol):
    """One output format. A module of this package that defines ``FORMAT`` registers it."""

    name: str

    def fields(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> Fields:
        """The columns, in order, given the idx type and the carried input columns' types."""

    def features(self, idx_type: pa.DataType, extra_types: Mapping[str, pa.DataType]) -> dict:
        """The HF ``features`` of those columns (what ``datasets`` decodes them as)."""

    def append(self, columns: dict[str, list], row: dict, extra_types: Mapping[str, pa.DataType]) -> None:
        """Append one kept pair (a ``Store.iter_kept_pairs`` row) to every one of its columns."""


@dataclass(frozen=True)
class ColumnSet:
    """Extra columns a pipeline adds to every format, after the format's own.

    ``values(store, row)`` gives one kept pair's value of each of ``fields``; a carried input
    column of the same name is left out in their favour."""

    name: str
    fields: tuple[tuple[str, pa.DataType], ...]
    features: Mapping[str, Any]
    values: Callable[[Store, dict], Mapping[str, Any]]


def value_feature(arrow_type: pa.DataType) -> dict:
    """The HF ``Value`` feature of a scalar Arrow type."""
    return {"dtype": _ARROW_TO_VALUE[arrow_type], "_type": "Value"}


def hf_metadata(features: dict) -> dict[bytes, bytes]:
    """Schema metadata that makes ``datasets.load_dataset("parquet")`` use these features."""
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A new file that appears at ``path`` only once it is complete.

    It is written under a unique name created exclusively next to ``path`` (never through a
    link someone planted there, never shared with a second export to the same path), synced
    to disk, then renamed over ``path``. On any error the partial file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a new file would be 0666 - umask
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
