"""Read input datasets row by row, and tell good rows from bad ones.

Two shapes are accepted, as a single file or a folder of shards (read in sorted name order):

* parquet with ``idx``, ``question`` and ``image`` = ``{bytes, path}`` (or plain bytes);
* jsonl with ``question``, optional ``idx``/``question_id`` and ``image`` (base64) or
  ``image_path`` (used when ``image`` is empty).

Reading streams: parquet in small record batches, jsonl line by line, so memory stays flat
whatever the dataset's size. A bad row never stops the good ones: it comes out as a
``RawRecord`` with ``error`` set. Only a file that cannot be read at all raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import MAX_IMAGE_PIXELS, MAX_QUESTION_CHARS
from .errors import DatasetUnreadable

CORE_FIELDS = ("idx", "question", "image")
PARQUET_BATCH_ROWS = 64  # rows per batch read from a parquet file, at most
PARQUET_BATCH_BYTES = 8 << 20  # and about this much data per batch: fewer rows when rows are big


def parquet_batch_rows(pf) -> int:
    """Rows per batch for the open ``pyarrow.parquet.ParquetFile`` ``pf``, from its mean row
    size (uncompressed, from the footer): 64 rows of 100 KB images, 2 rows of 4 MB ones, one
    row of anything bigger, so a batch's memory follows PARQUET_BATCH_BYTES, not the rows."""
    meta = pf.metadata
    if meta.num_rows == 0:
        return PARQUET_BATCH_ROWS
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // max(1, total // meta.num_rows)))


@dataclass
class RawRecord:
    row: int  # position in the dataset (0-based, across shards)
    idx: str | None  # canonical text form, used for uniqueness
    idx_value: object  # the value as given (int or str), for the output
    question: str | None
    image: bytes | None
    image_path: str | None
    extra: dict = field(default_factory=dict)
    error: str | None = None
    source: str = ""
    row_hash: str = ""
    image_file: str | None = None  # where the image lies (see dpo_engine.images), when there is one
    image_pos: int | None = None
    image_hash: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    path: Path
    files: tuple[Path, ...]
    kind: str  # "parquet" or "jsonl"
    image_root: Path | None = None  # when set, every image_path must lie inside it
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_question_chars: int = MAX_QUESTION_CHARS


def open_dataset(path: str | Path, image_root: str | Path | None = None, *,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, max_question_chars: int = MAX_QUESTION_CHARS
                 ) -> DatasetSource:
    """Check that ``path`` is a readable dataset and list its shard files. ``image_root``
    confines the rows' ``image_path``s to one folder (for datasets received from elsewhere);
    the caps make rows with larger images or longer questions invalid."""
    if image_root is not None and not Path(image_root).is_dir():
        raise DatasetUnreadable(f"--image-root {image_root} is not a folder")
    p = Path(path)
    if not p.exists():
        raise DatasetUnreadable(f"dataset {p} does not exist", "check the --dataset path")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in {".parquet", ".jsonl"})
        kinds = {f.suffix for f in files}
        if not files:
            raise DatasetUnreadable(f"dataset folder {p} holds no .parquet or .jsonl files")
        if len(kinds) > 1:
            raise DatasetUnreadable(f"dataset folder {p} mixes .parquet and .jsonl shards",
                                    "keep one format per folder")
    else:
        files = [p]
    kind = files[0].suffix.lstrip(".")
    if kind not in ("parquet", "jsonl"):
        raise DatasetUnreadable(f"{p}: unknown dataset format {files[0].suffix!r}",
                                "use .parquet or .jsonl")
    for f in files:
        _check_readable(f, kind)
    return DatasetSource(p, tuple(files), kind, Path(image_root).resolve() if image_root is not None else None,
                         max_image_pixels, max_question_chars)


def _check_readable(f: Path, kind: str) -> None:
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(f).schema_arrow
            if "question" not in schema.names:
                raise DatasetUnreadable(f"{f}: no 'question' column (columns: {', '.join(schema.names)})")
            if "image" not in schema.names and "image_path" not in schema.names:
                raise DatasetUnreadable(f"{f}: no 'image' or 'image_path' column")
        else:
            with f.open("rb") as fh:
                fh.read(1)
    except DatasetUnreadable:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetUnreadable(f"{f}: cannot be read as {kind} ({exc})") from exc


def iter_rows(source: DatasetSource) -> Iterator[tuple[str, dict | Exception, tuple[str, int]]]:
    """Yield ``(source, row_dict, at)`` for every row, or ``(source, error, at)`` for an
    unparseable one; ``at`` is (the file's absolute path, the row's number in a parquet file
    or its line's byte offset in a JSONL one), where the row can be read again."""
    for f in source.files:
        absolute = str(f.resolve())
        if source.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                # A buffered stream without pre-buffering reads column chunks a page at a time, so
                # peak memory follows the file's largest page, not its row groups: 2,000 x 100 KB
                # images, 141 MB as one row group and 145 MB in groups of 64 (pages near 1 MB);
                # 423 MB for one row group written with pyarrow's ~100 MB default pages for
                # values this big (benchmarks/ingest_memory.py). Batches follow bytes: 160 rows of
                # 4 MB in one row group peaked at 1,120 MB read 64 rows a batch, 99 MB two at a time.
                pf = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
                n = 0
                for batch in pf.iter_batches(batch_size=parquet_batch_rows(pf), use_threads=False):
                    for row in batch.to_pylist():
                        yield f"{f.name}:{n}", row, (absolute, n)
                        n += 1
            except Exception as exc:
                raise DatasetUnreadable(f"{f}: read failed part-way ({exc})") from exc
        else:
            with f.open("rb") as fh:
                offset = 0
                for n, raw in enumerate(fh):
                    at, offset = offset, offset + len(raw)
                    line = raw.decode("utf-8", errors="replace")
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise ValueError("line is not a JSON object")
                    except ValueError as exc:
                        yield f"{f.name}:{n + 1}", exc, (absolute, at)
                        continue
                    yield f"{f.name}:{n + 1}", row, (absolute, at)


def iter_records(source: DatasetSource, *, check_from: int = 0) -> Iterator[RawRecord]:
    """Every row as a ``RawRecord`` (from row ``start`` on), with ``error`` set for bad rows.

    Duplicate ``idx`` values are not detected here (that needs memory of all rows): the
    store and ``validate`` do it. Images are decoded (to check them) only from row
    ``check_from`` on: earlier rows were checked when first ingested and are only hashed now.
    """
    base_dir = source.path if source.path.is_dir() else source.path.parent
    for row_no, (where, row, at) in enumerate(iter_rows(source)):
        if isinstance(row, Exception):
            rec = RawRecord(row_no, None, None, None, None, None, error=f"unparseable row: {row}",
                            source=where)
            rec.row_hash = _hash_parts(["bad", str(row)])
            yield rec
            continue
        yield _to_record(row_no, where, row, at, base_dir, row_no >= check_from, source)


def _to_record(row_no: int, where: str, row: dict, at: tuple[str, int], base_dir: Path, check_images: bool,
               source: DatasetSource) -> RawRecord:
    image_root = source.image_root
    extra = {k: v for k, v in row.items() if k not in CORE_FIELDS}
    raw_idx = row.get("idx", row.get("question_id", row_no))
    rec = RawRecord(row_no, None, raw_idx, None, None, None, extra=extra, source=where)
    errors: list[str] = []
    if isinstance(raw_idx, bool) or not isinstance(raw_idx, (str, int)):
        errors.append(f"idx must be a string or an integer, got {type(raw_idx).__name__}")
    else:
        rec.idx = str(raw_idx)
    q = row.get("question")
    if q is None:
        errors.append("question is missing")
    elif not isinstance(q, str):
        errors.append(f"question must be a string, got {type(q).__name__}")
    elif not q.strip():
        errors.append("question is empty")
    elif len(q) > source.max_question_chars:
        errors.append(f"question is {len(q):,} characters, over --max-question-chars {source.max_question_chars:,}")
    else:
        rec.question = q
    image_bytes, image_path, image_error = image_of(row)
    rec.image_path = image_path
    hash_parts = [repr(raw_idx), repr(q), image_bytes or b"", image_path or "",
                  json.dumps(extra, sort_keys=True, default=_json_default)]
    if image_bytes is not None:
        rec.image_file, rec.image_pos = at
    if image_error:
        errors.append(image_error)
    elif image_bytes is None and image_path:
        resolved = _resolve_path(image_path, base_dir)
        if image_root is not None and not resolved.resolve().is_relative_to(image_root):
            errors.append(f"image_path {image_path!r} is outside --image-root {image_root} ({resolved.resolve()})")
        elif not resolved.is_file():
            errors.append(f"image_path {image_path!r} does not exist ({resolved.absolute()})")
        else:
            stat = resolved.stat()
            hash_parts.append(f"{stat.st_size}")
            try:
                image_bytes = resolved.read_bytes()
                rec.image_file = str(resolved.resolve())
            except OSError as exc:
                errors.append(f"image_path {image_path!r} cannot be read ({exc.strerror})")
    elif image_bytes is None:
        errors.append("no image: neither image bytes nor an image_path")
    if image_bytes is not None and not errors and check_images:
        problem = image_problem(image_bytes, source.max_image_pixels)
        if problem:
            errors.append(problem)
    rec.image = image_bytes
    if image_bytes is not None:
        rec.image_hash = image_digest(image_bytes)
    rec.row_hash = _hash_parts(hash_parts)
    if errors:
        rec.error = "; ".join(errors)
    return rec


def image_of(row: dict) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, path, error) from the row's ``image`` / ``image_path`` fields."""
    img = row.get("image")
    path = row.get("image_path")
    if path is not None and not isinstance(path, str):
        return None, None, f"image_path must be a string, got {type(path).__name__}"
    if isinstance(img, dict):
        data, inner_path = img.get("bytes"), img.get("path")
        if inner_path and not path:
            path = inner_path if isinstance(inner_path, str) else None
        if data is not None and not isinstance(data, (bytes, bytearray)):
            return None, path, f"image.bytes must be binary, got {type(data).__name__}"
        img = data
    if isinstance(img, (bytes, bytearray)):
        return (bytes(img) if img else None), path or None, None
    if isinstance(img, str):
        if not img:
            return None, path or None, None
        try:
            return base64.b64decode(img, validate=True), path or None, None
        except (binascii.Error, ValueError):
            return None, path, "image is not valid base64"
    if img is None:
        return None, path or None, None
    return None, path, f"image must be bytes, base64 text or {{bytes, path}}, got {type(img).__name__}"


def _resolve_path(image_path: str, base_dir: Path) -> Path:
    """An absolute path as it is; a relative one against the dataset's folder, never the
    current directory (a run started elsewhere must read the same images)."""
    return Path(image_path) if Path(image_path).is_absolute() else base_dir / image_path


def image_problem(data: bytes, max_pixels: int | None = None) -> str | None:
    """None if the bytes decode to an image (of at most ``max_pixels``), else why not. The
    size is read from the header first, so an oversized image is refused undecoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    return (f"image is {width:,} x {height:,} = {width * height:,} pixels, over "
                            f"--max-image-pixels {max_pixels:,}")
                im.load()
    except Exception as exc:  # PIL raises many types for broken data
        if type(exc).__name__ == "UnidentifiedImageError":
            return "image bytes do not decode (not a recognised image format)"
        return f"image bytes do not decode ({type(exc).__name__}: {exc})"
    return None


def decode_image(data: bytes):
    """Bytes to an RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def image_digest(data: bytes) -> str:
    """The hash a record keeps of its image's bytes (dpo_engine.images checks it on reading)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _hash_parts(parts: list) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(value).decode()}
    return str(value)


def encode_extra(extra: dict) -> str:
    return json.dumps(extra, sort_keys=False, default=_json_default, ensure_ascii=False)


def decode_extra(text: str) -> dict:
    def hook(obj):
        if set(obj) == {"__bytes__"}:
            return base64.b64decode(obj["__bytes__"])
        return obj

    return json.loads(text, object_hook=hook) if text else {}
