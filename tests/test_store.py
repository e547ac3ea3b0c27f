"""The store on a real SQLite file."""

import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, shapes_rows, write_parquet
from dpo_engine.dataset import open_dataset
from dpo_engine.errors import StoreError
from dpo_engine.ingest import ingest
from dpo_engine.stage import Outputs, SampleRow
from dpo_engine.store import MIGRATIONS, Store


def test_schema_is_versioned_and_wal(tmp_path):
    store = Store.in_work_dir(tmp_path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    Store.in_work_dir(tmp_path).close()  # reopening migrates nothing and fails nothing


def test_commit_replaces_outputs_and_clears_downstream(tmp_path):
    store = Store.in_work_dir(tmp_path)
    ingest(store, open_dataset(write_parquet(tmp_path / "d.parquet", shapes_rows(3))))
    assert store.pending("sample", "h1", [], limit=10) == [0, 1, 2]
    out = Outputs(samples=[SampleRow(0, 0, "a", 1, 1, 1), SampleRow(0, 1, "b", 1, 1, 2)],
                  failed={1: "boom"})
    store.commit("sample", "h1", [0, 1], out, writes=["samples"], downstream=["pair"], seconds=0.1)
    assert store.pending("sample", "h1", [], limit=10) == [1, 2]  # failed is retried later
    assert store.pending("pair", "p", [("sample", "h1")], limit=10) == [0]
    store.commit("pair", "p", [0], Outputs(), writes=["pairs"], downstream=[], seconds=0.0)
    assert store.pending("pair", "p", [("sample", "h1")], limit=10) == []
    # Recomputing sample for record 0 replaces its rows and makes pair pending again.
    again = Outputs(samples=[SampleRow(0, 0, "c", 1, 1, 3)])
    store.commit("sample", "h1", [0], again, writes=["samples"], downstream=["pair"], seconds=0.1)
    assert [s.text for s in store.samples_of(0)] == ["c"]
    assert store.pending("pair", "p", [("sample", "h1")], limit=10) == [0]
    # A new settings hash makes everything pending again.
    assert store.pending("sample", "h2", [], limit=10) == [0, 1, 2]
    state = store.conn.execute("SELECT status, attempts, error FROM stage_state WHERE stage='sample' AND rid=1").fetchone()
    assert state == ("failed", 1, "boom")


def test_reader_sees_committed_rows_while_writer_holds_a_transaction(tmp_path):
    store = Store.in_work_dir(tmp_path)
    ingest(store, open_dataset(write_parquet(tmp_path / "d.parquet", shapes_rows(2))))
    store.conn.execute("BEGIN IMMEDIATE")
    store.conn.execute("DELETE FROM record")
    reader = sqlite3.connect(tmp_path / "engine.db", timeout=1)
    assert reader.execute("SELECT COUNT(*) FROM record").fetchone()[0] == 2
    store.conn.execute("ROLLBACK")


def test_core_imports_stay_light():
    code = ("import sys, dpo_engine.store, dpo_engine.runner, dpo_engine.exports, dpo_engine.ingest,"
            " dpo_engine.monitor, dpo_engine.demo.quality, dpo_engine.engine, dpo_engine.pipelines;"
            " dpo_engine.pipelines.pipeline_names();"
            "bad = [m for m in ('torch', 'textual', 'transformers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_store_import_is_light():
    # ``status`` and the dashboard open the store first, through the engine: neither may pull in
    # the heavy libraries, nor (for ``status``) the Typer app.
    code = ("import sys, dpo_engine.store, dpo_engine.engine, dpo_engine.cli.fast;"
            "bad = [m for m in ('numpy', 'pandas', 'pyarrow', 'torch', 'textual', 'sqlite_utils', 'typer')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "engine.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="is not a usable dpo-engine store"):
        Store.in_work_dir(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        Store.in_work_dir(tmp_path / "nowhere", create=False)
