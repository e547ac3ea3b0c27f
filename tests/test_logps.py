"""`dpo-engine logps`: a DPO dataset one already has gets the logps column RLAIF-V's trainer
reads, equal to what `run` computed for the same answers; other columns and the row order
are kept, a row without an answer fails alone, and a rerun computes nothing again."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import cli, run_args


def test_logps_of_a_runs_own_pairs_equal_what_the_run_computed(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "run"
    cli(*run_args(tiny_models, demo_parquet, work))
    theirs = tmp_path / "pairs.parquet"
    cli("export", work, "--format", "rlaif-v-logps", "--out", theirs)
    table = pq.read_table(theirs)
    assert table.num_rows >= 4
    # A dataset from elsewhere: no logps yet, a column of its own, one row whose rejected answer is missing.
    rows = table.drop_columns(["logps"]).to_pylist()
    for i, row in enumerate(rows):
        row["origin"] = f"src-{i}"
    rows[1]["rejected"] = None
    given = tmp_path / "given.parquet"
    pq.write_table(pa.Table.from_pylist(rows), given)
    out = tmp_path / "with-logps.parquet"
    args = ("logps", "--dataset", given, "--model", tiny_models["instruct"], "--work-dir", tmp_path / "lp",
            "--out", out, "--json")
    first = cli(*args, check=False)
    assert first.returncode == 3  # one row failed; the others are written
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["rows"] == len(rows) - 1 and {s["name"]: s["failed"] for s in summary["stages"]}["answers"] == 1
    assert "no rejected answer" in first.stderr
    ours = pq.read_table(out).to_pylist()
    assert [r["idx"] for r in ours] == [r["idx"] for i, r in enumerate(rows) if i != 1]  # the dataset's order
    assert [r["origin"] for r in ours] == [f"src-{i}" for i in range(len(rows)) if i != 1]
    reference = [r for i, r in enumerate(table.to_pylist()) if i != 1]
    for row, run in zip(ours, reference):
        assert (row["chosen"], row["rejected"]) == (run["chosen"], run["rejected"])
        for a, b in zip(json.loads(row["logps"]), json.loads(run["logps"])):  # chosen sum, avg, per-token; rejected
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    again = json.loads(cli(*args, check=False).stdout.splitlines()[-1])
    assert {s["name"]: s["computed"] for s in again["stages"]}["logps_instruct"] == 0
