"""Records' images, read back from where the dataset keeps them.

The store does not copy images: each record keeps where its image lies and a hash of its
bytes. ``image_file`` is an absolute path and ``image_pos`` says where in it:

* a ``.parquet`` file: the row's number in that file (the ``image`` column holds the bytes);
* a ``.jsonl`` file: the byte offset of the row's line (``image`` holds base64);
* any other file (a row's ``image_path``): None, the file is the image.

Reading verifies the hash, so an image that changed or vanished since it was ingested stops
the work with ``DatasetChanged`` naming the record, never a silently different pair.

Stages read records in rid order, which is the dataset's order, so a parquet file is read
through one forward cursor (the image column only, a batch of rows at a time). The export's
order is shuffled: ``spool`` first copies the images it will need, in file order, into a
temporary file, which then answers in any order.
"""

from __future__ import annotations

import bisect
import json
import tempfile
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

from .dataset import image_digest, image_of, parquet_batch_rows
from .errors import DatasetChanged

CHANGED_HINT = ("put the dataset back as it was when it was ingested, or pass --restart to ingest it again "
                "(a run with --copy-images keeps the images in its work dir)")


class ImageRef(NamedTuple):
    file: str
    pos: int | None
    digest: str
    name: str  # the record as an error names it: "record IDX (SOURCE)"


class _ParquetCursor:
    """Reads one parquet file's ``image`` column forward; a row behind it reopens its row group."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        meta = self.pf.metadata
        self.starts = [0]
        for g in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
        self.batch_rows = parquet_batch_rows(self.pf)
        self.group = -1
        self.batches = iter(())
        self.first = 0  # row number of self.rows[0]
        self.rows: list = []

    def get(self, pos: int):
        """The ``image`` value of row ``pos``; IndexError when the file has no such row."""
        if not 0 <= pos < self.starts[-1]:
            raise IndexError(pos)
        group = bisect.bisect_right(self.starts, pos) - 1
        if group != self.group or pos < self.first:
            self.group = group
            self.batches = self.pf.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=["image"],
                                                use_threads=False)
            self.first, self.rows = self.starts[group], []
        while pos >= self.first + len(self.rows):
            self.first += len(self.rows)
            self.rows = next(self.batches).column(0).to_pylist()
        return self.rows[pos - self.first]

    def close(self) -> None:
        self.pf.close()


class ImageReader:
    """Reads images by ``ImageRef``; keeps its files open until ``close``."""

    def __init__(self):
        self._parquet: dict[str, _ParquetCursor] = {}
        self._jsonl: dict[str, BinaryIO] = {}
        self._spool: BinaryIO | None = None
        self._spooled: dict[tuple[str, int | None], tuple[int, int]] = {}

    def read(self, ref: ImageRef) -> bytes:
        at = self._spooled.get((ref.file, ref.pos))
        if at is not None:
            self._spool.seek(at[0])
            return self._spool.read(at[1])
        try:
            data = self._fetch(ref)
        except FileNotFoundError:
            raise DatasetChanged(f"{ref.name}: its image's file {ref.file} is gone", CHANGED_HINT) from None
        except (OSError, ValueError, IndexError, StopIteration) as exc:
            raise DatasetChanged(f"{ref.name}: its image cannot be read back from {ref.file} "
                                 f"({type(exc).__name__}: {exc})", CHANGED_HINT) from None
        if data is None or image_digest(data) != ref.digest:
            raise DatasetChanged(f"{ref.name}: its image in {ref.file} is not the one ingested (its content "
                                 "hash differs)", CHANGED_HINT)
        return data

    def spool(self, refs: Iterable[ImageRef]) -> None:
        """Copy the images of ``refs`` held in parquet files into a temporary file, reading each
        file once in row order, so that ``read`` then serves them in any order."""
        todo = sorted({(r.file, r.pos): r for r in refs if r.file.endswith(".parquet")}.values(),
                      key=lambda r: (r.file, r.pos))
        if not todo:
            return
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix="dpo-engine-images-")
        for ref in todo:
            if (ref.file, ref.pos) in self._spooled:
                continue
            data = self.read(ref)
            self._spool.seek(0, 2)
            self._spooled[(ref.file, ref.pos)] = (self._spool.tell(), len(data))
            self._spool.write(data)

    def _fetch(self, ref: ImageRef) -> bytes | None:
        if ref.pos is None:
            with open(ref.file, "rb") as fh:
                return fh.read()
        if ref.file.endswith(".parquet"):
            cursor = self._parquet.get(ref.file)
            if cursor is None:
                cursor = self._parquet[ref.file] = _ParquetCursor(ref.file)
            value = cursor.get(ref.pos)
        else:
            fh = self._jsonl.get(ref.file)
            if fh is None:
                fh = self._jsonl[ref.file] = open(ref.file, "rb")
            fh.seek(ref.pos)
            row = json.loads(fh.readline().decode("utf-8", errors="replace"))
            value = row.get("image") if isinstance(row, dict) else None
        return image_of({"image": value})[0]

    def close(self) -> None:
        for cursor in self._parquet.values():
            cursor.close()
        for fh in self._jsonl.values():
            fh.close()
        if self._spool is not None:
            self._spool.close()
        self._parquet, self._jsonl, self._spool, self._spooled = {}, {}, None, {}
