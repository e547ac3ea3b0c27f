import base64
import json

import pytest

from conftest import cli, shapes_rows, write_parquet
from dpo_engine.dataset import iter_records, open_dataset
from dpo_engine.errors import DatasetUnreadable
from dpo_engine.validate import validate_dataset


def records(path):
    return list(iter_records(open_dataset(path)))


def test_parquet_rows_and_extra_columns(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", shapes_rows(3))
    recs = records(path)
    assert [r.idx for r in recs] == ["r0", "r1", "r2"]
    assert all(r.error is None for r in recs)
    assert recs[0].extra == {"ds_name": "t"}
    assert recs[0].image_path == "r0.png"
    assert recs[0].image.startswith(b"\x89PNG")


def test_bad_parquet_rows_are_kept_with_their_cause(tmp_path):
    rows = shapes_rows(2)
    good = rows[0]["image"]["bytes"]
    rows += [
        {"idx": "a", "question": "q", "image": {"bytes": b"nope", "path": ""}, "ds_name": "t"},
        {"idx": "b", "question": "", "image": {"bytes": good, "path": ""}, "ds_name": "t"},
        {"idx": "c", "question": None, "image": {"bytes": good, "path": ""}, "ds_name": "t"},
        {"idx": "d", "question": "q", "image": {"bytes": None, "path": "missing.png"}, "ds_name": "t"},
    ]
    recs = records(write_parquet(tmp_path / "d.parquet", rows))
    errors = {r.idx: r.error for r in recs}
    assert errors["r0"] is None and errors["r1"] is None
    assert "do not decode" in errors["a"]
    assert errors["b"] == "question is empty"
    assert errors["c"] == "question is missing"
    assert "does not exist" in errors["d"]


def test_jsonl_base64_and_image_path(tmp_path):
    rows = shapes_rows(2)
    img_file = tmp_path / "pic.png"
    img_file.write_bytes(rows[1]["image"]["bytes"])
    lines = [
        {"question_id": 7, "question": "What?", "image": base64.b64encode(rows[0]["image"]["bytes"]).decode()},
        {"question": "Where?", "image": "", "image_path": "pic.png"},
        {"question": 5, "image": "", "image_path": "pic.png"},
        {"question": "x", "image": "!!notbase64!!"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
    recs = records(path)
    assert recs[0].error is None and recs[0].idx == "7" and recs[0].idx_value == 7
    assert recs[1].error is None and recs[1].image == rows[1]["image"]["bytes"]
    assert recs[1].extra["image_path"] == "pic.png"
    assert "must be a string" in recs[2].error
    assert "base64" in recs[3].error
    assert "unparseable" in recs[4].error


def test_folder_of_shards_keeps_row_numbers_across_files(tmp_path):
    write_parquet(tmp_path / "shards" / "part-0.parquet", shapes_rows(2, prefix="a"))
    write_parquet(tmp_path / "shards" / "part-1.parquet", shapes_rows(3, prefix="b"))
    recs = records(tmp_path / "shards")
    assert [r.row for r in recs] == [0, 1, 2, 3, 4]
    assert [r.idx for r in recs] == ["a0", "a1", "b0", "b1", "b2"]


@pytest.mark.parametrize("content,name", [(b"garbage", "x.parquet"), (b"", "x.csv")])
def test_unreadable_files_raise_one_clear_error(tmp_path, content, name):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetUnreadable):
        open_dataset(tmp_path / name)
    with pytest.raises(DatasetUnreadable):
        open_dataset(tmp_path / "absent.parquet")


def test_validate_reports_duplicates_and_counts(tmp_path):
    rows = shapes_rows(3)
    rows.append(dict(rows[1]))
    lines = []
    report = validate_dataset(write_parquet(tmp_path / "d.parquet", rows), lines.append)
    assert (report.total, report.valid, report.invalid) == (4, 3, 1)
    assert len(lines) == 1 and "duplicate idx 'r1' (first at row 1)" in lines[0]


def test_relative_image_paths_are_read_next_to_the_dataset_not_in_the_cwd(tmp_path, monkeypatch):
    rows = shapes_rows(2)
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "a.png").write_bytes(rows[0]["image"]["bytes"])
    (tmp_path / "cwd" / "img").mkdir(parents=True)
    (tmp_path / "cwd" / "img" / "a.png").write_bytes(rows[1]["image"]["bytes"])  # another image, same name
    (tmp_path / "cwd" / "img" / "only-here.png").write_bytes(rows[1]["image"]["bytes"])
    dataset = tmp_path / "data" / "d.jsonl"
    dataset.write_text(json.dumps({"idx": "a", "question": "q", "image_path": "img/a.png"}) + "\n"
                       + json.dumps({"idx": "b", "question": "q", "image_path": "img/only-here.png"}) + "\n")
    monkeypatch.chdir(tmp_path / "cwd")
    a, b = records(dataset)
    assert a.error is None and a.image == rows[0]["image"]["bytes"]  # the dataset's folder wins
    assert b.image is None and str(tmp_path / "data" / "img" / "only-here.png") in b.error  # not the CWD's
    report_lines = []
    validate_dataset(dataset, on_bad=report_lines.append)
    assert any(str(tmp_path / "data" / "img" / "only-here.png") in line for line in report_lines)


def test_image_root_confines_image_paths_to_one_folder(tmp_path):
    rows = shapes_rows(1)
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "a.png").write_bytes(rows[0]["image"]["bytes"])
    (tmp_path / "secret.png").write_bytes(rows[0]["image"]["bytes"])
    (tmp_path / "data" / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    dataset = tmp_path / "data" / "d.jsonl"
    lines = [{"idx": i, "question": "q", "image_path": p} for i, p in
             enumerate(["img/a.png", "../secret.png", str(tmp_path / "secret.png"), "img/link.png"])]
    dataset.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [r.error for r in records(dataset)] == [None] * 4  # by default any readable path is used
    confined = list(iter_records(open_dataset(dataset, image_root=tmp_path / "data" / "img")))
    assert confined[0].error is None
    assert all("outside --image-root" in r.error for r in confined[1:])  # ../, absolute, a link out
    with pytest.raises(DatasetUnreadable, match="not a folder"):
        open_dataset(dataset, image_root=tmp_path / "nowhere")
    checked = cli("validate", dataset, "--image-root", tmp_path / "data" / "img", check=False)
    assert checked.returncode == 1 and checked.stdout.count("outside --image-root") == 3


def test_oversized_images_and_questions_are_refused_by_their_numbers(tmp_path):
    import io

    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, format="PNG")  # 81 MP, over the 40 MP default; tiny as a PNG
    rows = shapes_rows(2)
    rows[0]["image"] = {"bytes": big.getvalue(), "path": ""}
    rows[1]["question"] = "describe " * 3000  # 27,000 characters
    path = write_parquet(tmp_path / "d.parquet", rows)
    first, second = records(path)
    assert "9,000 x 9,000 = 81,000,000 pixels, over --max-image-pixels 40,000,000" in first.error
    assert "27,000 characters, over --max-question-chars 20,000" in second.error
    relaxed = list(iter_records(open_dataset(path, max_image_pixels=10**8, max_question_chars=30_000)))
    assert [r.error for r in relaxed] == [None, None]
    checked = cli("validate", path, "--max-question-chars", "30000", check=False)
    assert checked.returncode == 1 and "81,000,000 pixels" in checked.stdout and "characters" not in checked.stdout


def test_big_rows_are_read_a_few_at_a_time_whatever_the_row_groups(tmp_path):
    """Batches follow bytes, not rows or row groups: 12 rows of 3 MB (incompressible) bytes in
    one row group are read two at a time (8 MB a batch), small rows 64 at a time, and every row
    still arrives once, in order."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dpo_engine.dataset import PARQUET_BATCH_BYTES, PARQUET_BATCH_ROWS, iter_rows, parquet_batch_rows

    big = [{"idx": f"b{i}", "question": "q", "image": {"bytes": os.urandom(3 << 20), "path": f"b{i}.png"}} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(big), tmp_path / "big.parquet", row_group_size=12, compression="none")
    pf = pq.ParquetFile(tmp_path / "big.parquet")
    assert pf.metadata.num_row_groups == 1 and parquet_batch_rows(pf) == PARQUET_BATCH_BYTES // (3 << 20) == 2
    small = write_parquet(tmp_path / "small" / "s.parquet", shapes_rows(100))
    assert parquet_batch_rows(pq.ParquetFile(small)) == PARQUET_BATCH_ROWS
    source = open_dataset(tmp_path / "big.parquet")
    assert [row["idx"] for _, row, _ in iter_rows(source)] == [r["idx"] for r in big]
