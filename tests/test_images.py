"""Images stay in the dataset: the store keeps where each lies and its hash, reads it back for
the stages and the export, and stops with the record's name when it changed or vanished."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli, run_args, shapes_rows, write_parquet
from dpo_engine.dataset import image_digest, iter_records, open_dataset
from dpo_engine.errors import DatasetChanged
from dpo_engine.images import ImageReader, ImageRef
from dpo_engine.store import Store


def _store_images(work) -> tuple[int, int]:
    """(records holding image bytes, records that say where their image lies)."""
    with sqlite3.connect(work / "engine.db") as c:
        return c.execute("SELECT COUNT(image), COUNT(image_file) FROM record").fetchone()


def _output_images(path) -> dict:
    table = pq.read_table(path, columns=["idx", "image"]).to_pylist()
    return {row["idx"]: row["image"]["bytes"] for row in table}


def _refs(path) -> list[tuple[ImageRef, bytes]]:
    return [(ImageRef(r.image_file, r.image_pos, r.image_hash, r.idx), r.image)
            for r in iter_records(open_dataset(path)) if r.error is None]


def test_a_run_stores_no_image_and_exports_the_datasets_own(tiny_models, tmp_path):
    rows = shapes_rows(6)
    data = write_parquet(tmp_path / "d.parquet", rows)
    cli(*run_args(tiny_models, data, tmp_path / "work", "--max-new-tokens", "12"))
    assert _store_images(tmp_path / "work") == (0, 6)
    given = {row["idx"]: row["image"]["bytes"] for row in rows}
    out = _output_images(tmp_path / "work" / "dataset" / "dpo_dataset.parquet")
    assert out and all(out[idx] == given[idx] for idx in out)


def test_an_image_changed_after_ingest_stops_the_export_naming_its_record(tiny_models, tmp_path):
    """image_path rows: ingest checks a file's size, the read-back its content."""
    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for row in shapes_rows(5):
        (folder / f"{row['idx']}.png").write_bytes(row["image"]["bytes"])
        lines.append(json.dumps({"idx": row["idx"], "question": row["question"], "image_path": f"{row['idx']}.png"}))
    data = folder / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    work = tmp_path / "work"
    cli(*run_args(tiny_models, data, work, "--max-new-tokens", "12"))
    kept = sorted(_output_images(work / "dataset" / "dpo_dataset.parquet"))
    victim = folder / f"{kept[0]}.png"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, other content
    victim.write_bytes(bytes(blob))
    proc = cli("export", work, "--out", tmp_path / "out.parquet", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())
    assert f"record {kept[0]}" in said and "not the one ingested" in said and "--restart" in said, said
    assert not (tmp_path / "out.parquet").exists()
    victim.unlink()
    proc = cli("export", work, "--out", tmp_path / "out.parquet", check=False)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and "is gone" in said and kept[0] in said, said
    # What needs no image still reads: the dashboard's record view (without the picture) and the
    # pairs' texts (the demo's quality report reads them so).
    store = Store.in_work_dir(work, create=False, readonly=True)
    try:
        pairs = list(store.iter_kept_pairs(images=False))
        assert pairs and all(row["image"] is None and row["chosen"] for row in pairs)
        rid = next(row["rid"] for row in pairs if row["idx_value"] == json.dumps(kept[0]))
        detail = store.record_detail(rid)
        assert detail.image is None and detail.question and detail.answers
    finally:
        store.close()


def test_a_dataset_moved_elsewhere_is_followed_by_the_next_run(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "a" / "d.parquet", shapes_rows(6))
    work = tmp_path / "work"
    args = run_args(tiny_models, data, work, "--max-new-tokens", "12")
    cli(*args)
    first = (work / "dataset" / "dpo_dataset.parquet").read_bytes()
    moved = tmp_path / "b" / "d.parquet"
    moved.parent.mkdir()
    shutil.move(data, moved)
    proc = cli("export", work, "--out", tmp_path / "x.parquet", check=False)
    assert proc.returncode == 2 and "is gone" in proc.stdout + proc.stderr
    cli(*[str(moved) if a == str(data) else a for a in args])
    assert (work / "dataset" / "dpo_dataset.parquet").read_bytes() == first
    with sqlite3.connect(work / "engine.db") as c:
        assert {f for (f,) in c.execute("SELECT DISTINCT image_file FROM record")} == {str(moved.resolve())}
    cli("export", work, "--out", tmp_path / "y.parquet")
    assert (tmp_path / "y.parquet").read_bytes() == first


def test_copy_images_keeps_them_in_the_store_so_the_dataset_may_go(tiny_models, tmp_path):
    data = write_parquet(tmp_path / "d.parquet", shapes_rows(4))
    work = tmp_path / "work"
    cli(*run_args(tiny_models, data, work, "--max-new-tokens", "12", "--copy-images"))
    assert _store_images(work) == (4, 4)
    data.unlink()
    cli("export", work, "--out", tmp_path / "out.parquet")
    assert (tmp_path / "out.parquet").read_bytes() == (work / "dataset" / "dpo_dataset.parquet").read_bytes()


def test_parquet_images_read_back_in_any_order_across_row_groups(tmp_path):
    rows = shapes_rows(23)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5)
    refs = _refs(path)
    assert [ref.pos for ref, _ in refs] == list(range(23))
    reader = ImageReader()
    try:
        order = [22, 0, 1, 7, 6, 6, 13, 4, 21, 20, 3]
        assert [reader.read(refs[i][0]) for i in order] == [refs[i][1] for i in order]
        reader.spool(ref for ref, _ in reversed(refs))
        assert all(reader.read(ref) == data for ref, data in refs)
    finally:
        reader.close()


def test_jsonl_images_are_found_by_byte_offset_past_blank_lines_and_wide_characters(tmp_path):
    rows = shapes_rows(4)
    path = tmp_path / "d.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"idx": row["idx"], "question": "图里有什么？" * (i + 1),
                                 "image": base64.b64encode(row["image"]["bytes"]).decode()}, ensure_ascii=False))
            fh.write("\n\n" if i % 2 else "\r\n")
    refs = _refs(path)
    assert len(refs) == 4
    reader = ImageReader()
    try:
        assert [reader.read(ref) for ref, _ in reversed(refs)] == [row["image"]["bytes"] for row in reversed(rows)]
    finally:
        reader.close()


def test_a_row_the_parquet_file_no_longer_has_is_a_changed_dataset(tmp_path):
    rows = shapes_rows(3)
    path = write_parquet(tmp_path / "d.parquet", rows)
    ref, _ = _refs(path)[2]
    write_parquet(path, rows[:2])
    reader = ImageReader()
    with pytest.raises(DatasetChanged, match="cannot be read back"):
        reader.read(ref._replace(name="record r2 (d.parquet:2)"))
    with pytest.raises(DatasetChanged, match="not the one ingested"):
        reader.read(ref._replace(pos=1))
    reader.close()
    assert ref.digest == image_digest(rows[2]["image"]["bytes"])
