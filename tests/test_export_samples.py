"""`export --what samples`: one row per sampled answer, read back and fed through the pairing
rules, reproduces the run's pairs."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pyarrow.parquet as pq

from conftest import cli, run_args
from dpo_engine.config import RunConfig
from dpo_engine.stage import Batch, RewardRow, SampleRow
from dpo_engine.stages.pair import PairStage


def test_samples_round_trip_through_the_pairing_rules(tiny_models, demo_parquet, tmp_path):
    work = tmp_path / "run"
    cli(*run_args(tiny_models, demo_parquet, work, "--rank", "2"))
    out = tmp_path / "samples.parquet"
    shown = cli("export", work, "--what", "samples", "--out", out)
    rows = pq.read_table(out).to_pylist()
    db = sqlite3.connect(work / "engine.db")
    assert f"wrote {len(rows)} samples" in shown.stdout
    assert len(rows) == db.execute("SELECT COUNT(*) FROM sample").fetchone()[0]
    assert {tuple(sorted(e["role"] for e in r["logps"])) for r in rows} == {("instruct", "reward")}
    assert all(len(e["per_token"]) == e["n_tokens"] for r in rows for e in r["logps"])
    # Fed back through the pairing rules, the exported samples and rewards give the run's pairs.
    rid_of = dict(db.execute("SELECT idx, rid FROM record"))
    batch = Batch(rids=sorted({rid_of[r["idx"]] for r in rows}))
    for r in rows:
        rid = rid_of[r["idx"]]
        batch.samples.setdefault(rid, []).append(SampleRow(rid, r["inner_idx"], r["text"], r["n_tokens"],
                                                           r["n_words"], 0))
        batch.rewards.setdefault(rid, []).append(RewardRow(rid, r["inner_idx"], r["reward_sum"], r["reward_avg"],
                                                           r["reward_min"], r["reward_last"]))
    config = replace(RunConfig("dpo_reward", str(demo_parquet), str(work)), rank=2)
    again = sorted(tuple(p) for p in PairStage().process(batch, None, config).pairs)
    assert again and again == sorted(db.execute("SELECT rid, ord, chosen, rejected FROM pair").fetchall())
    kept = db.execute("SELECT COUNT(*) FROM kept_pair").fetchone()[0]
    assert sum(r["chosen_in_kept"] for r in rows) == kept == sum(r["rejected_in_kept"] for r in rows)
    assert {r["status"] for r in rows} <= {"kept", "filtered", "unpaired"} and "kept" in {r["status"] for r in rows}
    as_jsonl = tmp_path / "samples.jsonl"
    cli("export", work, "--what", "samples", "--format", "jsonl", "--out", as_jsonl)
    assert [json.loads(line) for line in as_jsonl.read_text().splitlines()] == rows
    wrong = cli("export", work, "--what", "samples", "--format", "trl", "--out", tmp_path / "x", check=False)
    assert wrong.returncode != 0 and "parquet or jsonl" in wrong.stderr and not (tmp_path / "x").exists()
