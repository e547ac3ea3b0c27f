"""Write the kept pairs as a parquet dataset, streaming, in the run's (shuffled) order.

A format is one module of this package that defines ``FORMAT`` (an ``ExportFormat``: its
``name``, columns, HF features and how it appends one pair); ``formats()`` finds them, so a new
format is one new file. Modules named ``_*`` are helpers, and a module without ``FORMAT``
(``claims``) is skipped. ``register_format`` adds one from elsewhere (tests, plugins).

The caller (the pipeline) adds its own columns to every format with ``ColumnSet``s, e.g.
``claims.CLAIMS`` for divide_and_conquer; they come after the format's columns.

Every file carries the ``huggingface`` schema metadata that makes
``datasets.load_dataset("parquet")`` decode the image columns as images, and, when the caller
knows it, ``dpo_engine`` metadata naming the settings hash whose pairs it holds.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DpoEngineError
from ..store import Store
from ._arrow import JSON_TO_ARROW, ColumnSet, ExportFormat, atomic_file, hf_metadata

__all__ = ["CHUNK_ROWS", "ColumnSet", "ExportFormat", "ExportReport", "copy_export", "export", "formats",
           "register_format", "settings_hash_of"]

CHUNK_ROWS = 256


@dataclass(frozen=True)
class ExportReport:
    path: Path
    pairs: int
    records_with_pairs: int
    mean_chosen_words: float
    mean_rejected_words: float
    settings_hash: str | None = None  # the settings whose pairs these are
    note: str | None = None  # what the caller should know (e.g. a newer run is unfinished)


@functools.cache
def _registry() -> dict[str, ExportFormat]:
    found: dict[str, ExportFormat] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        fmt = getattr(module, "FORMAT", None)
        if fmt is None:
            continue
        if fmt.name in found:
            raise RuntimeError(f"export format {fmt.name!r} is defined twice (again in {module.__name__})")
        found[fmt.name] = fmt
    return found


def formats() -> dict[str, ExportFormat]:
    """Every known format by name: this package's modules' ``FORMAT``s, then registered ones."""
    return dict(_registry())


def register_format(fmt: ExportFormat, *, replace: bool = False) -> ExportFormat:
    """Make ``fmt`` usable as ``export(..., fmt.name)`` without a module in this package."""
    registry = _registry()
    if not replace and registry.get(fmt.name, fmt) is not fmt:
        raise ValueError(f"export format {fmt.name!r} already exists (pass replace=True)")
    registry[fmt.name] = fmt
    return fmt


def export(store: Store, out: str | Path, fmt: str = "rlaif-v", columns: Sequence[ColumnSet] = (), *,
           settings_hash: str | None = None) -> ExportReport:
    """Write the kept pairs to ``out`` in format ``fmt``, plus the ``columns`` sets' columns;
    ``settings_hash``, when given, is written into the file's metadata."""
    known = formats()
    if fmt not in known:
        raise DpoEngineError(f"unknown export format {fmt!r}", f"use one of {', '.join(known)}")
    form = known[fmt]
    out = Path(out)
    if store.count("kept_pair") == 0 and store.count("pair") == 0 and store.count("sample") == 0:
        raise DpoEngineError(f"{store.path} holds no results yet", "run `dpo-engine run` first")
    idx_type = pa.int64() if store.idx_kind() == "integer" else pa.string()
    added = [name for cs in columns for name, _ in cs.fields]
    extra_types = {name: JSON_TO_ARROW.get(kind, pa.string())
                   for name, kind in store.extra_column_types().items() if name not in added}
    fields = list(form.fields(idx_type, extra_types))
    features = dict(form.features(idx_type, extra_types))
    own = {name for name, _ in fields}
    clash = sorted({name for i, name in enumerate(added) if name in own or name in added[:i]})
    if clash:
        raise ValueError(f"columns {clash} given twice by format {form.name!r} and column sets"
                         f" {[cs.name for cs in columns]}")
    for cs in columns:
        fields += list(cs.fields)
        features.update(cs.features)
    metadata = hf_metadata(features)
    if settings_hash is not None:
        metadata[_OURS] = json.dumps({"settings_hash": settings_hash}).encode()
    schema = pa.schema([pa.field(n, t) for n, t in fields], metadata=metadata)
    if out.is_dir():
        raise DpoEngineError(f"{out} is a folder", "name the .parquet file to write")
    batch: dict[str, list] = {n: [] for n, _ in fields}
    n_pairs = pending = 0
    chosen_words = rejected_words = 0
    rids: set[int] = set()
    with atomic_file(out) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for row in store.iter_kept_pairs(logps=_instruct_logps(store)):
            n_pairs += 1
            pending += 1
            rids.add(row["rid"])
            chosen_words += row["chosen_words"]
            rejected_words += row["rejected_words"]
            form.append(batch, row, extra_types)
            for cs in columns:
                values = cs.values(store, row)
                for name, _ in cs.fields:
                    batch[name].append(values[name])
            if pending >= CHUNK_ROWS:
                writer.write_table(pa.table(batch, schema=schema))
                batch = {n: [] for n, _ in fields}
                pending = 0
        if pending or n_pairs == 0:
            writer.write_table(pa.table(batch, schema=schema))
    return ExportReport(out, n_pairs, len(rids), chosen_words / n_pairs if n_pairs else 0.0,
                        rejected_words / n_pairs if n_pairs else 0.0, settings_hash)


_OURS = b"dpo_engine"


def _instruct_logps(store: Store) -> bool:
    """Whether the store's ``instruct`` log-probs are the instruct model's own: not when a
    dpo_reward run scored them with a reference model of its own (``--reference-model``); a
    trainer's DPO reference is the model it trains, so such log-probs are left out."""
    info = store.run_info()
    models = info.settings.get("models", {}) if info else {}
    return models.get("reference") in (None, models.get("instruct"))


def settings_hash_of(path: str | Path) -> str | None:
    """The settings hash an exported file says it holds, or None (no such file, no mark)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    return json.loads(meta[_OURS]).get("settings_hash") if _OURS in meta else None


def copy_export(src: Path, out: str | Path) -> ExportReport:
    """Write an earlier export of the run (``src``) to ``out`` as it is, atomically."""
    out = Path(out)
    if out.is_dir():
        raise DpoEngineError(f"{out} is a folder", "name the .parquet file to write")
    table = pq.read_table(src, columns=["idx", "chosen", "rejected"])
    with atomic_file(out) as fh, open(src, "rb") as source:
        shutil.copyfileobj(source, fh, 1 << 20)
    chosen = [len(t.split()) for t in table.column("chosen").to_pylist()]
    rejected = [len(t.split()) for t in table.column("rejected").to_pylist()]
    n = table.num_rows
    return ExportReport(out, n, len(set(table.column("idx").to_pylist())), sum(chosen) / n if n else 0.0,
                        sum(rejected) / n if n else 0.0, settings_hash_of(src))
